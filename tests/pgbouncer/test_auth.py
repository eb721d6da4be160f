"""The PgBouncer helper asks clients for the password, and refuses values that would inject."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from sqlalchemy import make_url

from uow import ConfigurationError
from uow.testing import PgBouncer


def test_clients_without_the_password_are_refused(session_bouncer: PgBouncer) -> None:
    """A local client without the password gets nothing, the console included; the URL and
    admin_dsn, which carry it, work."""
    for dbname in ("postgres", "pgbouncer"):
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(
                host=session_bouncer.host, port=session_bouncer.port, user="postgres", dbname=dbname
            )
    url = make_url(session_bouncer.url).set(drivername="postgresql")
    with psycopg.connect(url.render_as_string(hide_password=False)) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    with psycopg.connect(session_bouncer.admin_dsn, autocommit=True) as console:
        assert console.execute("SHOW VERSION", prepare=False).fetchone()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"users": {"postgres": 'pw"\n"admin" "x'}},
        {"users": ["post\ngres"]},
        {"password": "pw\0"},
        {"server_host": "127.0.0.1 port=1\nadmin_users = x"},
        {"settings": {"max_client_conn": "10\nauth_type = trust"}},
    ],
)
def test_values_that_would_inject_config_lines_are_refused(kwargs: dict[str, Any]) -> None:
    """Line breaks, NULs and quotes in users, passwords, the host or settings are refused
    with ConfigurationError, which never shows a password."""
    with pytest.raises(ConfigurationError) as raised:
        PgBouncer(5432, **kwargs)
    assert "pw" not in str(raised.value)
