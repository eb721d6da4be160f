"""Fixtures of the PgBouncer suite: a real PgBouncer in front of the session's server.

PgBouncer comes from the system (Debian: ``apt-get install pgbouncer``; ``.ci/run``
installs it). Nothing is skipped: without it, the fixture fails with what to install.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import make_url

from uow.testing import PgBouncer


@pytest.fixture(scope="module")
def bouncer(postgres_url: str) -> Iterator[PgBouncer]:
    """PgBouncer in transaction mode with 4 server connections, in front of the test server."""
    server = make_url(postgres_url)
    assert server.host and server.port, f"the test server needs a TCP host and port: {server!r}"
    with PgBouncer(
        server.port, server_host=server.host, default_pool_size=4, password=server.password
    ) as pgbouncer:
        yield pgbouncer


@pytest.fixture(scope="module")
def session_bouncer(postgres_url: str) -> Iterator[PgBouncer]:
    """PgBouncer in session mode in front of the test server, with its password."""
    server = make_url(postgres_url)
    assert server.host and server.port, f"the test server needs a TCP host and port: {server!r}"
    with PgBouncer(
        server.port, server_host=server.host, pool_mode="session", password=server.password
    ) as pgbouncer:
        yield pgbouncer


@pytest.fixture(scope="module")
def bouncer_url(bouncer: PgBouncer, postgres_url: str) -> str:
    """URL of the test database through PgBouncer."""
    database = make_url(postgres_url).database
    assert database
    return bouncer.url_for(database)
