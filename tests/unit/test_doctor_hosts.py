"""The doctor's per-host side connections: one host of the URL's, short, any role."""

from __future__ import annotations

import pytest

from uow import Settings
from uow._ops.doctor_hosts import _probe_args, target_session_attrs
from uow._ops.pooler import _one_host, side_connect_args

URL = (
    "postgresql://u:pw@/app?host=db1,db2&port=5433,5434&hostaddr=10.0.0.1,10.0.0.2"
    "&sslmode=verify-full&target_session_attrs=read-write&load_balance_hosts=random"
)


def test_a_probe_reaches_one_host_with_the_urls_parameters() -> None:
    """The index-th host, port and address; TLS kept; any role; connect_timeout at most 3."""
    params = _probe_args(Settings(url=URL), 1)
    assert (params["host"], params["port"], params["hostaddr"]) == ("db2", "5434", "10.0.0.2")
    assert params["sslmode"] == "verify-full" and params["password"] == "pw"
    assert params["target_session_attrs"] == "any" and "load_balance_hosts" not in params
    assert params["connect_timeout"] == 3
    shorter = _probe_args(Settings(url="postgresql://u@/app?host=a,b&connect_timeout=2"), 1)
    assert (shorter["host"], shorter["port"], shorter["connect_timeout"]) == ("b", "", 2)


def test_the_console_is_asked_on_the_host_reached() -> None:
    """PgBouncer's console: the host the doctor's connection reached, and its address."""
    params = side_connect_args(Settings(url=URL), dbname="pgbouncer")
    assert _one_host(params, ("db2", 5434)) == {
        "host": "db2",
        "port": "5434",
        "hostaddr": "10.0.0.2",
    }


def test_target_session_attrs_comes_from_the_url_or_libpqs_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The URL's value wins; else PGTARGETSESSIONATTRS, as libpq reads it; else any."""
    monkeypatch.delenv("PGTARGETSESSIONATTRS", raising=False)
    plain = Settings(url="postgresql://u@/app?host=a,b")
    assert target_session_attrs(plain) == "any"
    monkeypatch.setenv("PGTARGETSESSIONATTRS", "read-write")
    assert target_session_attrs(plain) == "read-write"
    assert target_session_attrs(Settings(url=URL.replace("read-write", "primary"))) == "primary"
