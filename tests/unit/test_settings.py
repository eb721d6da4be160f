"""Settings: parsing, validation and masking, without a database."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from decimal import Decimal
from enum import IntEnum
from fractions import Fraction
from typing import Any

import hypothesis
import pytest
from hypothesis import strategies as st

import uow
from tests.helpers import ROOT, any_value
from uow import ConfigurationError, Settings

URL = "postgresql://app:hunter2@db.example:5432/shop"


def test_postgres_schemes_select_psycopg3() -> None:
    """postgres:// and postgresql:// URLs are normalised to the psycopg 3 driver."""
    for scheme in ("postgres", "postgresql", "postgresql+psycopg"):
        settings = Settings(url=f"{scheme}://app:pw@host/db")
        assert settings.url == "postgresql+psycopg://app:pw@host/db"


@pytest.mark.parametrize(
    "url", ["mysql://u:hunter2@h/db", "postgresql+psycopg2://u:hunter2@h/db", "sqlite://"]
)
def test_other_drivers_are_refused(url: str) -> None:
    """A URL for another database or driver raises ConfigurationError without the password."""
    with pytest.raises(ConfigurationError, match="psycopg 3") as info:
        Settings(url=url)
    assert "hunter2" not in str(info.value)


def test_unparsable_url_is_refused_without_echoing_it() -> None:
    """A garbled URL is refused, and the message does not repeat it (it may hold a password)."""
    with pytest.raises(ConfigurationError, match="could not be parsed") as info:
        Settings(url="postgresql://app:hunter2@host:notaport/db")
    assert "hunter2" not in str(info.value)


def test_repr_masks_password() -> None:
    """Neither repr() nor masked_url shows the password."""
    settings = Settings(url=URL)
    assert "hunter2" not in repr(settings)
    assert "***" in repr(settings)
    assert "hunter2" not in settings.masked_url
    assert "hunter2" not in repr(uow.Database(settings))


@pytest.mark.parametrize(
    ("name", "value", "accepted"),
    [
        ("pool_size", 0, "from 1 to 1000"),
        ("pool_size", 2.5, "integer"),
        ("pool_size", True, "integer"),
        ("max_overflow", -1, "from 0 to 1000"),
        ("pool_timeout", 0, "over 0"),
        ("pool_timeout", float("nan"), "seconds"),
        ("pool_recycle", 0, "or -1"),
        ("connect_timeout", 0.5, "from 1"),
        ("statement_timeout", -1, "from 0"),
        ("lock_timeout", "5", "seconds"),
        ("idle_in_transaction_timeout", 0.0001, "1 ms"),
        ("pool_pre_ping", "yes", "True or False"),
        ("application_name", "x" * 64, "63 characters"),
    ],
)
def test_bad_values_name_setting_value_and_range(name: str, value: object, accepted: str) -> None:
    """Every invalid value raises ConfigurationError naming the setting, value and range."""
    with pytest.raises(ConfigurationError) as info:
        Settings(url=URL, **{name: value})
    message = str(info.value)
    assert name in message
    assert repr(value) in message
    assert accepted in message


def test_defaults_are_production_ones() -> None:
    """Defaults: fixed-size pool, pre-ping on, recycle and server-side timeouts set."""
    settings = Settings(url=URL)
    assert (settings.pool_size, settings.max_overflow) == (5, 0)
    assert settings.pool_pre_ping is True
    assert 0 < settings.pool_recycle < 350  # under common load-balancer idle limits
    assert settings.pool_timeout <= 10
    assert settings.statement_timeout > 0
    assert settings.lock_timeout > 0
    assert settings.idle_in_transaction_timeout > 0
    assert settings.application_name.startswith("uow")


def test_from_env_reads_database_url_and_uow_variables() -> None:
    """from_env() reads DATABASE_URL and UOW_* variables, with units for durations."""
    env = {
        "DATABASE_URL": "postgres://app:pw@h/db",
        "UOW_POOL_SIZE": "12",
        "UOW_MAX_OVERFLOW": "3",
        "UOW_POOL_TIMEOUT": "500ms",
        "UOW_POOL_RECYCLE": "5min",
        "UOW_PRE_PING": "off",
        "UOW_STATEMENT_TIMEOUT": "2.5",
        "UOW_IDLE_IN_TRANSACTION_TIMEOUT": "30s",
        "UOW_APPLICATION_NAME": "billing",
    }
    settings = Settings.from_env(env)
    assert settings.url == "postgresql+psycopg://app:pw@h/db"
    assert (settings.pool_size, settings.max_overflow) == (12, 3)
    assert settings.pool_timeout == pytest.approx(0.5)
    assert settings.pool_recycle == pytest.approx(300)
    assert settings.pool_pre_ping is False
    assert settings.statement_timeout == pytest.approx(2.5)
    assert settings.idle_in_transaction_timeout == pytest.approx(30)
    assert settings.application_name == "billing"


def test_from_env_keyword_arguments_win() -> None:
    """Keyword arguments to from_env() override the environment."""
    env = {"DATABASE_URL": "postgresql://h/db", "UOW_POOL_SIZE": "12"}
    assert Settings.from_env(env, pool_size=2).pool_size == 2


def test_from_env_without_database_url_says_what_to_set() -> None:
    """A missing DATABASE_URL raises ConfigurationError that names the variable."""
    with pytest.raises(ConfigurationError, match="DATABASE_URL is not set"):
        Settings.from_env({})


@pytest.mark.parametrize(
    ("variable", "raw"),
    [("UOW_POOL_SIZE", "ten"), ("UOW_PRE_PING", "maybe"), ("UOW_POOL_TIMEOUT", "5 hours")],
)
def test_from_env_bad_text_names_the_variable(variable: str, raw: str) -> None:
    """Unparsable environment values raise ConfigurationError naming the variable."""
    with pytest.raises(ConfigurationError, match=variable):
        Settings.from_env({"DATABASE_URL": "postgresql://h/db", variable: raw})


def test_unknown_keyword_setting_is_refused() -> None:
    """A misspelt setting raises ConfigurationError instead of being ignored."""
    with pytest.raises(ConfigurationError, match="unknown setting"):
        Settings.from_env({"DATABASE_URL": "postgresql://h/db"}, pool_sise=3)


def test_settings_are_immutable_and_replace_validates() -> None:
    """Settings are frozen; replace() returns a validated copy."""
    settings = Settings(url=URL)
    with pytest.raises(AttributeError):
        settings.pool_size = 3  # type: ignore[misc]
    assert settings.replace(pool_size=3).pool_size == 3
    with pytest.raises(ConfigurationError):
        settings.replace(pool_size=-3)


def test_engine_options_pass_through_to_sqlalchemy() -> None:
    """engine_options reach create_engine untouched; unknown ones are refused clearly."""
    database = uow.Database(Settings(url=URL, engine_options={"pool_reset_on_return": "rollback"}))
    assert database.engine.pool._reset_on_return is not None
    with pytest.raises(ConfigurationError, match="create_engine"):
        uow.Database(Settings(url=URL, engine_options={"no_such_option": 1}))


def test_from_env_ignores_other_parts_variables_quietly(caplog: pytest.LogCaptureFixture) -> None:
    """Variables for tests and migrations are not settings and cause no warning."""
    env = {
        "DATABASE_URL": "postgresql://h/db",
        "UOW_MIGRATIONS_URL": "postgresql://owner@h/db",
        "UOW_MIGRATIONS_LOCK_TIMEOUT": "2",
        "UOW_TEST_DATABASE_URL": "postgresql://h/test",
        "UOW_POOL_SIZE": "4",
    }
    assert Settings.from_env(env).pool_size == 4
    assert caplog.text == ""


def test_from_env_warns_about_a_misspelt_variable(caplog: pytest.LogCaptureFixture) -> None:
    """An unknown UOW_ variable (a typo) is reported with the known names."""
    Settings.from_env({"DATABASE_URL": "postgresql://h/db", "UOW_POOLSIZE": "4"})
    assert "UOW_POOLSIZE" in caplog.text
    assert "UOW_POOL_SIZE" in caplog.text


def test_processes_default_from_web_concurrency(monkeypatch: pytest.MonkeyPatch) -> None:
    """processes defaults to WEB_CONCURRENCY (gunicorn, uvicorn), else 1; UOW_PROCESSES wins."""
    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    assert Settings(url=URL).processes == 1
    monkeypatch.setenv("WEB_CONCURRENCY", "4")
    assert Settings(url=URL).processes == 4
    env = {"DATABASE_URL": URL, "UOW_PROCESSES": "8"}
    assert Settings.from_env(env).processes == 8
    with pytest.raises(ConfigurationError, match="processes"):
        Settings(url=URL, processes=0)


def test_pgbouncer_mode_is_read_and_normalised() -> None:
    """UOW_PGBOUNCER takes PgBouncer's pool_mode names, in any case."""
    env = {"DATABASE_URL": "postgresql://h/db", "UOW_PGBOUNCER": " Transaction "}
    assert Settings.from_env(env).pgbouncer == "transaction"
    assert Settings(url="postgresql://h/db").pgbouncer == "off"


@pytest.mark.parametrize(
    ("mode", "message"),
    [("statement", "statement mode forbids transactions"), ("txn", "use one of off, session")],
)
def test_pgbouncer_bad_mode_says_what_to_use(mode: str, message: str) -> None:
    """Statement mode is refused with the reason; an unknown mode lists the accepted ones."""
    with pytest.raises(ConfigurationError, match=message):
        Settings(url="postgresql://h/db", pgbouncer=mode)


def test_replica_urls_from_env_are_normalised_and_masked() -> None:
    """UOW_REPLICA_URLS is comma-separated; each URL is normalised, and masked in the repr."""
    settings = Settings.from_env(
        {
            "DATABASE_URL": URL,
            "UOW_REPLICA_URLS": "postgres://app:hunter2@r1/shop, postgresql://app:hunter3@r2/shop",
            "UOW_REPLICA_READ_AFTER_WRITE": "250ms",
        }
    )
    assert settings.replica_urls == (
        "postgresql+psycopg://app:hunter2@r1/shop",
        "postgresql+psycopg://app:hunter3@r2/shop",
    )
    assert settings.replica_read_after_write == 0.25
    shown = repr(settings)
    assert "hunter" not in shown
    assert "replica_urls=('postgresql+psycopg://app:***@r1/shop'" in shown
    assert Settings(url=URL).replica_urls == ()
    assert Settings(url=URL, replica_urls=["postgres://r/db"]).replica_urls == (
        "postgresql+psycopg://r/db",
    )


@pytest.mark.parametrize(
    ("replicas", "message"),
    [
        (["mysql://app:hunter2@r/db"], "replica_urls[0] 'mysql://app:***@r/db' uses driver"),
        ([URL, "not a url:::"], "replica_urls[1] could not be parsed"),
        ([""], "replica_urls[0] is empty; set UOW_REPLICA_URLS"),
        (5, "replica_urls must be a list of URLs or a comma-separated string"),
    ],
)
def test_bad_replica_urls_are_refused_without_the_password(replicas: object, message: str) -> None:
    """A bad replica URL names its position and never shows its password."""
    with pytest.raises(ConfigurationError) as caught:
        Settings(url=URL, replica_urls=replicas)  # type: ignore[arg-type]
    assert message in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_replica_read_after_write_is_validated() -> None:
    """replica_read_after_write is seconds from 0 to 3600."""
    with pytest.raises(ConfigurationError, match="replica_read_after_write=-1"):
        Settings(url=URL, replica_read_after_write=-1)


def test_replica_max_lag_is_validated() -> None:
    """replica_max_lag is seconds, 0 (off, the default) or more."""
    assert Settings(url=URL).replica_max_lag == 0
    assert (
        Settings.from_env({"DATABASE_URL": URL, "UOW_REPLICA_MAX_LAG": "5s"}).replica_max_lag == 5
    )
    with pytest.raises(ConfigurationError, match="replica_max_lag=-1"):
        Settings(url=URL, replica_max_lag=-1)


class _BrokenRepr:
    """A value whose repr() raises, as some proxies' do."""

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


class _Name(str):
    """A str subclass (an enum member, a lazy translation string...)."""

    __slots__ = ()


_DURATIONS = [
    "pool_timeout",
    "pool_recycle",
    "pool_pre_ping_idle",
    "connect_timeout",
    "statement_timeout",
    "lock_timeout",
    "idle_in_transaction_timeout",
    "long_transaction_threshold",
    "leak_detection_threshold",
    "replica_read_after_write",
    "replica_max_lag",
]
_INTEGERS = ["pool_size", "max_overflow", "processes"]
_FLAGS = ["pool_pre_ping", "pool_use_lifo", "leak_detection_stack", "check_budget", "echo"]
_BAD_NUMBERS = [
    10**400,  # too big for a float: math.isfinite() raised OverflowError
    -(10**400),
    10**5000,  # past Python's digit limit: even repr() raises
    Decimal("sNaN"),  # comparing it raised decimal.InvalidOperation
    Decimal("NaN"),
    Decimal("Infinity"),
    Decimal("1e400"),
    Fraction(10**400, 3),
    float("inf"),
    float("nan"),
    "5",
    "",
    None,
    True,
    b"5",
    [5],
    _BrokenRepr(),
]


@pytest.mark.parametrize("name", _DURATIONS + _INTEGERS)
@pytest.mark.parametrize("value", _BAD_NUMBERS, ids=lambda v: type(v).__name__)
def test_bad_numbers_raise_configuration_error_only(name: str, value: object) -> None:
    """Huge ints, Decimal NaNs, infinities and non-numbers give ConfigurationError, naming it."""
    with pytest.raises(ConfigurationError) as info:
        Settings(url=URL, **{name: value})
    message = str(info.value)
    assert name in message
    assert "integer from" in message or "seconds" in message
    assert len(message) < 400


@pytest.mark.parametrize(
    ("name", "value", "stored"),
    [
        ("pool_timeout", Decimal("2.5"), 2.5),
        ("pool_timeout", Fraction(1, 4), 0.25),
        ("pool_recycle", Decimal(-1), -1),
        ("statement_timeout", Decimal("0.5"), 0.5),
        ("pool_size", IntEnum("Size", "ONE TWO").TWO, 2),
    ],
)
def test_other_real_numbers_are_taken_as_plain_numbers(
    name: str, value: object, stored: float
) -> None:
    """Decimal, Fraction and int subclasses are accepted and stored as plain int or float."""
    found = getattr(Settings(url=URL, **{name: value}), name)
    assert found == stored
    assert type(found) in (int, float)


@pytest.mark.parametrize(
    "name",
    ["app\x00lication", "tab\there", "new\nline", "bell\x07", "del\x7f", "café", "名前", "\x1b[2J"],
)
def test_application_name_postgresql_cannot_carry_is_refused(name: str) -> None:
    """NUL, control and non-ASCII characters in application_name give ConfigurationError."""
    with pytest.raises(ConfigurationError, match="printable ASCII") as info:
        Settings(url=URL, application_name=name)
    assert "application_name" in str(info.value)


def test_application_name_str_subclass_is_stored_as_str() -> None:
    """A str subclass is accepted for application_name and stored as a plain str."""
    settings = Settings(url=URL, application_name=_Name("billing"), pgbouncer=_Name("Session"))
    assert type(settings.application_name) is str
    assert settings.application_name == "billing"
    assert (type(settings.pgbouncer), settings.pgbouncer) == (str, "session")


def test_default_application_name_survives_an_unusual_program_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A program named with non-ASCII characters still gets a valid default name."""
    monkeypatch.setattr(sys, "argv", ["/srv/café\x00.py"])
    assert Settings(url=URL).application_name == "uow:caf??"


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("UOW_POOL_SIZE", "9" * 5000),  # more digits than int() converts
        ("UOW_POOL_TIMEOUT", "9" * 400),  # a float overflows to inf
    ],
)
def test_from_env_numbers_too_long_are_refused_briefly(variable: str, raw: str) -> None:
    """Numbers too long to convert give a short ConfigurationError naming the variable."""
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env({"DATABASE_URL": URL, variable: raw})
    assert variable in str(info.value)
    assert len(str(info.value)) < 400


def test_web_concurrency_that_is_not_a_number_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    """WEB_CONCURRENCY="²" (a digit to str.isdigit(), not to int()) falls back to 1 process."""
    monkeypatch.setenv("WEB_CONCURRENCY", "²")
    assert Settings(url=URL).processes == 1


_ANY_VALUE = any_value(
    st.binary(),
    st.builds(_Name, st.text()),
    st.sampled_from(_BAD_NUMBERS),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(), st.integers(), max_size=3),
)
_FIELDS = [
    *_DURATIONS,
    *_INTEGERS,
    *_FLAGS,
    "application_name",
    "pgbouncer",
    "engine_options",
]


@hypothesis.settings(max_examples=300, deadline=None, database=None)
@hypothesis.given(changes=st.dictionaries(st.sampled_from(_FIELDS), _ANY_VALUE, max_size=4))
def test_any_values_give_configuration_error_or_valid_settings(changes: dict[str, Any]) -> None:
    """Whatever values the settings get, the outcome is ConfigurationError or usable Settings."""
    try:
        settings = Settings(url=URL, **changes)
    except ConfigurationError as exc:
        assert len(str(exc)) < 600
        return
    for name in _DURATIONS + _INTEGERS:
        assert type(getattr(settings, name)) in (int, float)
    assert type(settings.application_name) is str
    assert settings.replace() == settings
    assert "hunter2" not in repr(settings)


@hypothesis.settings(max_examples=200, deadline=None, database=None)
@hypothesis.given(
    variable=st.sampled_from([f"UOW_{name.upper()}" for name in _FIELDS[:-1]]), raw=st.text()
)
def test_any_environment_text_gives_error_or_settings(variable: str, raw: str) -> None:
    """Any text in a UOW_ variable gives ConfigurationError or valid Settings."""
    with contextlib.suppress(ConfigurationError):
        Settings.from_env({"DATABASE_URL": URL, variable: raw})


def test_application_name_of_a_package_run_with_python_m(tmp_path: Any) -> None:
    """``python -m billing`` names its connections uow:billing, not uow:__main__."""
    package = tmp_path / "billing"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(
        "import uow\nprint(uow.Settings(url='postgresql://h/db').application_name)\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "billing"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "uow:billing"
