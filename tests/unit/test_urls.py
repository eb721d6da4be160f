"""URLs as libpq reads them: multi-host forms, passwords, hosts and the URL's parameters."""

from __future__ import annotations

import pytest
from sqlalchemy import make_url

from uow import ConfigurationError, Settings
from uow._conninfo import connect_args, connect_kwargs, merge_options, server_settings
from uow._engine.timeouts import startup_timeouts
from uow._settings import mask_url

SECRET = "S3cr3t!pw"


def args(settings: Settings) -> dict[str, object]:
    return connect_args(settings, startup_timeouts(settings))


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u@h1:5433,h2:5434/db",
        "postgresql://u@/db?host=h1,h2&port=5433,5434",
        "postgresql://u@/db?host=h1:5433&host=h2:5434",
    ],
)
def test_multi_host_forms_reach_libpq_as_host_and_port_lists(url: str) -> None:
    """Each multi-host form libpq accepts becomes libpq's host=h1,h2 port=p1,p2."""
    kwargs = connect_kwargs(Settings(url=url))
    assert (kwargs["host"], kwargs["port"]) == ("h1,h2", "5433,5434")
    assert kwargs["dbname"] == "db"


def test_host_list_with_ports_in_the_query_is_refused_naming_the_forms_that_work() -> None:
    """?host=h1:p1,h2:p2 (libpq would look up "h1:p1") is refused with the working forms."""
    with pytest.raises(ConfigurationError, match=r"host=h1,h2&port=p1,p2"):
        Settings(url="postgresql://u@/db?host=h1:5433,h2:5434")


def test_host_and_port_counts_must_match() -> None:
    """Three hosts with two ports are refused at configuration, not at every connect."""
    with pytest.raises(ConfigurationError, match="don't match"):
        Settings(url="postgresql://u@/db?host=a,b,c&port=1,2")


def test_target_session_attrs_passes_through() -> None:
    """libpq's target_session_attrs reaches psycopg untouched."""
    settings = Settings(url="postgresql://u@h1,h2/db?target_session_attrs=read-write")
    assert connect_kwargs(settings)["target_session_attrs"] == "read-write"


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://u@h/db?password={SECRET}",
        f"postgresql://u@/db?host=h1,h2&password={SECRET}",
        f"postgresql://u@h1:1,h2:2/db?password={SECRET}",
    ],
)
def test_password_in_the_query_is_masked(url: str) -> None:
    """?password= is masked in mask_url, masked_url and the Settings repr."""
    settings = Settings(url=url, replica_urls=[url])
    assert connect_kwargs(settings)["password"] == SECRET
    for shown in (mask_url(url), settings.masked_url, repr(settings)):
        assert SECRET not in shown and "***" in shown
    assert SECRET not in mask_url(url.replace("password", "sslpassword"))


def test_password_with_an_unencoded_at_sign_is_refused_without_echo() -> None:
    """user:pa@ss@host is refused with the percent-encode advice; no part of it is echoed."""
    for url in (
        "postgresql://u:S3cr3t!pw@#@127.0.0.1/db",
        "postgresql://u:S3cr3t@pw@127.0.0.1/db",
        "postgresql://u:S3cr3t@pw@h1:1,h2:2/db",
    ):
        with pytest.raises(ConfigurationError, match="percent-encode") as caught:
            Settings(url=url)
        assert "S3cr3t" not in str(caught.value) and "pw" not in str(caught.value)
    assert "S3cr3t" not in mask_url("postgresql://u:S3cr3t@pw@127.0.0.1/db")


@pytest.mark.parametrize("host", ["exa mple.com", "a..b", "x" * 64 + ".com", "h%25x"])
def test_host_that_is_no_host_name_is_refused(host: str) -> None:
    """A host that is neither an IP, a socket directory nor an IDNA name: ConfigurationError."""
    with pytest.raises(ConfigurationError, match="host name"):
        Settings(url=f"postgresql://u@{host}/db")


@pytest.mark.parametrize("host", ["db.example.com", "bücher.example", "my_db", "[::1]", "10.0.0.1"])
def test_valid_hosts_are_accepted(host: str) -> None:
    """DNS names (IDNA too), docker-style names and IP addresses are accepted."""
    Settings(url=f"postgresql://u@{host}:5432/db")


def test_percent_encoded_socket_directory_reaches_libpq_decoded() -> None:
    """postgresql://u@%2Frun%2Fpg/db connects to the socket in /run/pg, as libpq reads it."""
    assert connect_kwargs(Settings(url="postgresql://u@%2Frun%2Fpg/db"))["host"] == "/run/pg"


def test_url_parameters_are_kept_and_uow_fills_the_rest() -> None:
    """The URL's libpq parameters win; uow adds only what it leaves unset."""
    url = (
        "postgresql://u@h/db?options=-c%20search_path%3Dfoo&application_name=x"
        "&connect_timeout=2&keepalives_idle=5"
    )
    settings = Settings(url=url)
    kwargs = connect_kwargs(settings)
    assert kwargs["application_name"] == "x" and settings.application_name == "x"
    assert kwargs["connect_timeout"] == "2" and settings.connect_timeout == 2
    assert kwargs["keepalives_idle"] == "5" and kwargs["keepalives_interval"] == 10
    assert server_settings(str(kwargs["options"])) == {
        "search_path": "foo",
        "statement_timeout": "30000ms",
        "lock_timeout": "10000ms",
        "idle_in_transaction_session_timeout": "60000ms",
    }
    assert "application_name" not in args(settings)  # SQLAlchemy passes the URL's


def test_timeout_in_the_options_is_uows_view_of_it() -> None:
    """-c statement_timeout=1500 in the URL is what settings.statement_timeout says."""
    settings = Settings(url="postgresql://u@h/db?options=-c%20statement_timeout%3D1500")
    assert settings.statement_timeout == 1.5
    assert server_settings(str(args(settings)["options"]))["statement_timeout"] == "1500"
    assert Settings(url="postgresql://u@h/db?options=--lock-timeout%3D2min").lock_timeout == 120


def test_a_setting_contradicting_the_url_is_refused_naming_both() -> None:
    """UOW_STATEMENT_TIMEOUT=10 and -c statement_timeout=5s in the URL: ConfigurationError."""
    url = "postgresql://u@h/db?options=-c%20statement_timeout%3D5s&application_name=x"
    with pytest.raises(ConfigurationError, match=r"statement_timeout is set twice.*10.*5"):
        Settings.from_env({"DATABASE_URL": url, "UOW_STATEMENT_TIMEOUT": "10"})
    with pytest.raises(ConfigurationError, match="application_name is set twice"):
        Settings(url=url, application_name="y")
    assert Settings(url=url, statement_timeout=5).statement_timeout == 5  # agreeing is fine
    with pytest.raises(ConfigurationError, match=r"replica_urls\[0\]"):
        Settings(url="postgresql://u@h/db", statement_timeout=7, replica_urls=[url])


def test_a_replica_takes_its_own_urls_values_not_the_primarys() -> None:
    """replace(url=...) drops what the old URL set: a replica gets its own URL's values."""
    primary = Settings(url="postgresql://u@h/db?options=-c%20lock_timeout%3D1s")
    replica = primary.replace(url="postgresql://u@r/db")
    assert (primary.lock_timeout, replica.lock_timeout) == (1.0, 10.0)
    assert primary.replace(pool_size=2).lock_timeout == 1.0


def test_bad_values_in_the_url_are_refused() -> None:
    """connect_timeout=0 (wait forever) and an unreadable timeout raise ConfigurationError."""
    with pytest.raises(ConfigurationError, match="connect_timeout='0' in the URL"):
        Settings(url="postgresql://u@h/db?connect_timeout=0")
    with pytest.raises(ConfigurationError, match="not a duration"):
        Settings(url="postgresql://u@h/db?options=-c%20lock_timeout%3Dsoon")


def test_options_split_like_the_server_splits_them() -> None:
    """Backslash-escaped spaces stay in the value; -cname=value and --name=value count."""
    options = r"-c search_path=a\ b -cwork_mem=4MB --Lock-Timeout=1s -B 8"
    assert server_settings(options) == {
        "search_path": "a b",
        "work_mem": "4MB",
        "lock_timeout": "1s",
    }
    merged = merge_options(options, {"lock_timeout": "5ms", "statement_timeout": "1ms"})
    assert merged == options + " -c statement_timeout=1ms"


def test_connect_args_in_engine_options_count_as_the_users() -> None:
    """connect_args' options are merged like the URL's, and its values are uow's view."""
    settings = Settings(
        url="postgresql://u@h/db",
        engine_options={"connect_args": {"options": "-c statement_timeout=2s"}},
    )
    assert settings.statement_timeout == 2
    assert args(settings)["options"] == (
        "-c statement_timeout=2s -c lock_timeout=10000ms "
        "-c idle_in_transaction_session_timeout=60000ms"
    )
    assert make_url(settings.url).query == {}


@pytest.mark.parametrize(
    "query",
    [
        "options=-c%20statement_timeout%3D999999999s",
        "options=-c%20lock_timeout%3D-5",
        "application_name=a%00b",
    ],
)
def test_values_taken_from_the_url_are_checked_like_settings(query: str) -> None:
    """A timeout or name the URL sets gets the same range check as the setting itself."""
    with pytest.raises(ConfigurationError):
        Settings(url=f"postgresql://u@h/db?{query}")
