"""Fixtures of the async suite: databases whose asyncio pool must end empty, and fault servers.

pytest-asyncio is not used: a test is a plain function that runs its scenario with
:func:`run` (``asyncio.run``), so each test gets a fresh event loop and nothing of one
test's loop can reach the next. Connections belong to the loop that opened them, so a
test keeps to one scenario per Database; the fixtures close the asyncio pools in a
loop of their own at teardown, after checking that nothing is checked out.

``server`` and ``fault`` are the fault suite's fixtures (tests/faults/conftest.py),
which are not visible from here, with the end check extended to the asyncio pool.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import psycopg
import pytest

from tests.conftest import MakeDatabase
from tests.faults.helpers import FaultWatch
from tests.models import Base
from uow import Database, Settings, migrations
from uow.testing import EmbeddedPostgres

T = TypeVar("T")

MAX_CONNECTIONS = 20
TEST_TABLES = ", ".join(table.name for table in Base.metadata.sorted_tables)


def run(scenario: Coroutine[Any, Any, T]) -> T:
    """Run one test's scenario in a fresh event loop and return its result."""
    return asyncio.run(scenario)


def idle_in_transaction(admin: psycopg.Connection[Any], app_name: str) -> list[tuple[Any, ...]]:
    """(pid, state, query) of the application's sessions left idle in a transaction.

    Waits up to 2 s for such sessions to go: a connection the pool discarded mid-transaction
    is closed at once, but its server process takes a moment to notice and exit. One the
    pool still holds stays, and is reported.
    """
    deadline = time.monotonic() + 2.0
    while True:
        stuck = admin.execute(
            "SELECT pid, state, left(query, 80) FROM pg_stat_activity"
            " WHERE application_name = %s AND state LIKE 'idle in transaction%%'",
            (app_name,),
        ).fetchall()
        if not stuck or time.monotonic() > deadline:
            return stuck
        time.sleep(0.02)


def async_checked_out(databases: list[Database]) -> list[tuple[Database, int]]:
    """The databases whose asyncio pool has connections checked out, with how many."""
    return [
        (db, db.async_engine.pool.checkedout())
        for db in databases
        if db.async_engine.pool.checkedout()
    ]


def dispose_all(databases: list[Database]) -> None:
    """Close the asyncio pools' connections (in a loop of their own), then the sync pools."""

    async def close() -> None:
        for db in databases:
            await db.dispose_async()

    run(close())
    for db in databases:
        db.dispose()


@pytest.fixture
def make_adb(
    make_database: MakeDatabase, admin: psycopg.Connection[Any], app_name: str
) -> Iterator[MakeDatabase]:
    """Build Databases on emptied test tables; each must end with nothing checked out.

    At teardown: no connection checked out on any asyncio pool, no session of the
    application idle in transaction; then the asyncio pools are closed.
    """
    admin.execute(f"TRUNCATE {TEST_TABLES} RESTART IDENTITY")
    made: list[Database] = []

    def make(**settings: Any) -> Database:
        database = make_database(**settings)
        made.append(database)
        return database

    yield make
    try:
        leaked = async_checked_out(made)
        assert not leaked, f"connections still checked out on the asyncio pool: {leaked}"
        stuck = idle_in_transaction(admin, app_name)
        assert not stuck, f"sessions left idle in transaction (pid, state, query): {stuck}"
    finally:
        dispose_all(made)


@pytest.fixture
def adb(make_adb: MakeDatabase) -> Database:
    """A default-sized Database for one async test, on empty tables."""
    return make_adb()


# -- the fault suite's fixtures, for the async variant ---------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[EmbeddedPostgres]:
    """A throwaway cluster for the module (max_connections=20): test tables and bank schema."""
    postgres = EmbeddedPostgres(max_connections=MAX_CONNECTIONS).start()
    try:
        migrations.upgrade(postgres.url, "head")
        with Database(Settings(url=postgres.url, application_name="uow-fault-setup")) as db:
            Base.metadata.create_all(db.engine)
        yield postgres
    finally:
        postgres.cleanup()


def assert_clean(watch: FaultWatch) -> str:
    """The fault suite's end check, extended to the asyncio pools; returns what it saw."""
    leaked = async_checked_out(watch.databases)
    assert not leaked, f"connections still checked out on the asyncio pool: {leaked}"
    idle = sum(db.async_engine.pool.checkedin() for db in watch.databases)
    return f"async pool checked_out=0, idle={idle}; {watch.assert_clean()}"


@pytest.fixture
def fault(server: EmbeddedPostgres, request: pytest.FixtureRequest) -> Iterator[FaultWatch]:
    """The test's application on empty tables; at the end, nothing checked out or left open."""
    server.start()  # a no-op unless an earlier test of the module left it stopped
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40]
    watch = FaultWatch(server, f"async-{slug}-{uuid.uuid4().hex[:8]}")
    watch.side.execute(f"TRUNCATE {TEST_TABLES}, accounts, ledger RESTART IDENTITY CASCADE")
    try:
        yield watch
        assert_clean(watch)
    finally:
        try:
            dispose_all(watch.databases)
        finally:
            watch.close()
