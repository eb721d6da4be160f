"""Fixtures of the async suite: databases whose asyncio pool must end empty.

pytest-asyncio is not used: a test is a plain function that runs its scenario with
:func:`run` (``asyncio.run``), so each test gets a fresh event loop and nothing of one
test's loop can reach the next. Connections belong to the loop that opened them, so a
test keeps to one scenario per Database; the fixtures close the asyncio pools in a
loop of their own at teardown, after checking that nothing is checked out.

The fault scenarios run for AsyncUnitOfWork in tests/faults, through its async driver.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import psycopg
import pytest

from tests.conftest import MakeDatabase
from tests.helpers import wait_for
from tests.models import Base
from uow import Database

T = TypeVar("T")

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

    def stuck() -> list[tuple[Any, ...]]:
        return admin.execute(
            "SELECT pid, state, left(query, 80) FROM pg_stat_activity"
            " WHERE application_name = %s AND state LIKE 'idle in transaction%%'",
            (app_name,),
        ).fetchall()

    with contextlib.suppress(AssertionError):
        wait_for(lambda: not stuck(), timeout=2.0, what="discarded sessions to exit")
    return stuck()


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
