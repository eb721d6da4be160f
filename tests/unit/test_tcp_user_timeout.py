"""libpq's tcp_user_timeout: uow's default follows the statement timeout; the user's wins."""

from __future__ import annotations

import psycopg
import pytest

from uow import Settings
from uow._conninfo import connect_args, connect_kwargs
from uow._engine.timeouts import startup_timeouts
from uow._engine.watchdog import GRACE, TCP_GRACE


def args(settings: Settings) -> dict[str, object]:
    return connect_args(settings, startup_timeouts(settings))


def test_default_is_the_statement_timeout_plus_grace_in_ms() -> None:
    """statement_timeout=30: tcp_user_timeout=(30 + 10) * 1000, after the watchdog's limit."""
    assert TCP_GRACE > GRACE
    settings = Settings(url="postgresql://u@h/db", statement_timeout=30)
    assert args(settings)["tcp_user_timeout"] == round((30 + TCP_GRACE) * 1000)
    assert connect_kwargs(settings)["tcp_user_timeout"] == round((30 + TCP_GRACE) * 1000)


def test_follows_a_statement_timeout_written_in_the_url() -> None:
    """-c statement_timeout=2s in the URL's options sets the default too."""
    settings = Settings(url="postgresql://u@h/db?options=-c%20statement_timeout%3D2s")
    assert args(settings)["tcp_user_timeout"] == round((2 + TCP_GRACE) * 1000)


@pytest.mark.parametrize(
    "given",
    [
        {"url": "postgresql://u@h/db?tcp_user_timeout=1234"},
        {
            "url": "postgresql://u@h/db",
            "engine_options": {"connect_args": {"tcp_user_timeout": 1234}},
        },
    ],
    ids=["url", "connect_args"],
)
def test_the_users_value_wins(given: dict[str, object]) -> None:
    """A tcp_user_timeout in the URL or in connect_args reaches libpq unchanged."""
    settings = Settings(**given)  # type: ignore[arg-type]
    assert str(connect_kwargs(settings)["tcp_user_timeout"]) == "1234"
    # From the URL, SQLAlchemy passes it itself: uow's connect_args leave it out.
    if "engine_options" not in given:
        assert "tcp_user_timeout" not in args(settings)


def test_not_set_when_the_statement_timeout_is_off() -> None:
    """statement_timeout=0 (off): no limit to derive it from, so libpq's default (none)."""
    settings = Settings(url="postgresql://u@h/db", statement_timeout=0)
    assert "tcp_user_timeout" not in connect_kwargs(settings)


def test_libpq_accepts_the_parameter() -> None:
    """psycopg's libpq (12 or newer) knows tcp_user_timeout: it parses, and is a keyword."""
    assert psycopg.pq.version() >= 120000
    psycopg.conninfo.conninfo_to_dict("tcp_user_timeout=35000")  # libpq refuses unknown ones
    assert b"tcp_user_timeout" in {d.keyword for d in psycopg.pq.Conninfo.get_defaults()}
