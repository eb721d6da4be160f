"""Fixtures of the fault suite: a throwaway server per module, the per-test watch, the driver.

Each module gets its own EmbeddedPostgres (scenarios restart or kill it) with a low
``max_connections``, so a connection leak shows up as ``too many clients`` instead of
hiding in a big budget. Nothing is skipped: a server that cannot start fails the module.
A scenario that takes ``driver`` runs twice: with the sync and with the async unit of work.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import pytest

from tests.faults.driver import Driver
from tests.faults.helpers import FaultWatch
from tests.models import Base
from uow import Database, Settings
from uow.testing import EmbeddedPostgres

MAX_CONNECTIONS = 20


@pytest.fixture(scope="module")
def server() -> Iterator[EmbeddedPostgres]:
    """A throwaway cluster for the module (max_connections=20), with the test tables."""
    postgres = EmbeddedPostgres(max_connections=MAX_CONNECTIONS).start()
    try:
        with Database(Settings(url=postgres.url, application_name="uow-fault-setup")) as db:
            Base.metadata.create_all(db.engine)
        yield postgres
    finally:
        postgres.cleanup()


@pytest.fixture
def fault(server: EmbeddedPostgres, request: pytest.FixtureRequest) -> Iterator[FaultWatch]:
    """The test's application on empty tables; at the end, nothing checked out or left open."""
    server.start()  # a no-op unless an earlier test of the module left it stopped
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40]
    watch = FaultWatch(server, f"fault-{slug}-{uuid.uuid4().hex[:8]}")
    tables = ", ".join(table.name for table in Base.metadata.sorted_tables)
    watch.side.execute(f"TRUNCATE {tables} RESTART IDENTITY")
    try:
        yield watch
        watch.assert_clean()
    finally:
        watch.close()


@pytest.fixture(params=[False, True], ids=["sync", "async"])
def driver(request: pytest.FixtureRequest, fault: FaultWatch) -> Iterator[Driver]:
    """The scenario's workers with UnitOfWork in threads, or AsyncUnitOfWork in tasks."""
    driver = Driver(asynchronous=request.param)
    try:
        yield driver
        fault.assert_clean()  # before the asyncio pools close, which would hide a leak
    finally:
        driver.close(fault.databases)
