"""`uow doctor` behind PgBouncer: it finds PgBouncer and says when the setting is wrong."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest
from sqlalchemy import make_url

from uow import Settings
from uow._ops.doctor import diagnose, run
from uow._ops.report import EXIT_ACTION
from uow.testing import PgBouncer


def _codes(settings: Settings) -> set[str]:
    return {w.code for w in diagnose(settings).warnings}


def test_prepared_statements_behind_pgbouncer_need_action(bouncer_url: str) -> None:
    """Transaction mode with UOW_PGBOUNCER unset: an ACTION warning, exit 1, PgBouncer shown."""
    out, err = io.StringIO(), io.StringIO()
    code = run(Settings(url=bouncer_url), out=out, err=err)
    assert code == EXIT_ACTION, err.getvalue()
    text = out.getvalue()
    assert "[ACTION] psycopg's prepared statements are on behind PgBouncer" in text
    assert "set UOW_PGBOUNCER=transaction" in text
    assert "PgBouncer 1." in text and "transaction" in text

    out = io.StringIO()
    run(Settings(url=bouncer_url), as_json=True, out=out, err=err)
    report = json.loads(out.getvalue())
    assert report["pgbouncer"]["detected"] is True
    assert report["pgbouncer"]["pool_mode"] == "transaction"
    assert report["pgbouncer"]["max_prepared_statements"] == 0
    codes = {w["code"] for w in report["warnings"] if w["action"]}
    assert "prepared_statements_behind_pgbouncer" in codes


def test_the_right_setting_is_not_warned_about(bouncer_url: str) -> None:
    """With UOW_PGBOUNCER=transaction there is nothing to say about PgBouncer."""
    codes = _codes(Settings(url=bouncer_url, pgbouncer="transaction"))
    assert not {c for c in codes if "pgbouncer" in c or "prepared" in c}


def test_a_direct_connection_is_not_pgbouncer(postgres_url: str) -> None:
    """Straight to PostgreSQL: detected is false and no PgBouncer warning appears."""
    report = diagnose(Settings(url=postgres_url))
    assert report.pgbouncer == {"detected": False}
    assert "pgbouncer_not_confirmed" in _codes(Settings(url=postgres_url, pgbouncer="transaction"))


@pytest.fixture(scope="module")
def session_mode_bouncer(postgres_url: str) -> Iterator[str]:
    """URL of the test database through PgBouncer in session mode."""
    server = make_url(postgres_url)
    assert server.port and server.database
    with PgBouncer(
        server.port, server_host=server.host or "", pool_mode="session", password=server.password
    ) as bouncer:
        yield bouncer.url_for(server.database)


def test_session_mode_needs_its_setting(session_mode_bouncer: str) -> None:
    """Session mode refuses uow's startup options: ACTION until UOW_PGBOUNCER=session."""
    assert "pgbouncer_session_mode" in _codes(Settings(url=session_mode_bouncer))
    assert "pgbouncer_mode_mismatch" in _codes(
        Settings(url=session_mode_bouncer, pgbouncer="transaction")
    )
    assert not {
        c for c in _codes(Settings(url=session_mode_bouncer, pgbouncer="session")) if "pgb" in c
    }


def test_without_console_rights_the_port_gives_it_away(postgres_url: str) -> None:
    """When the console refuses the user, the port mismatch still points at a proxy."""
    server = make_url(postgres_url)
    assert server.port and server.database
    with PgBouncer(
        server.port,
        server_host=server.host or "",
        settings={"admin_users": "someone_else"},
        password=server.password,
    ) as bouncer:
        report = diagnose(Settings(url=bouncer.url_for(server.database)))
    assert report.pgbouncer["detected"] is None
    assert report.pgbouncer["server_port"] == server.port
    assert "proxy_in_between" in {w.code for w in report.warnings}
