"""Shared fixtures: one real PostgreSQL for the session, and databases that cannot leak.

The server is the one named by UOW_TEST_DATABASE_URL, or else a throwaway embedded
PostgreSQL. Nothing is ever skipped for want of a server: fixture errors fail loudly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import Engine, make_url

import uow
import uow.migrations
from tests.helpers import wait_for
from tests.models import Base
from tests.protocol_trace import Trace
from uow import Database, Settings
from uow._default import _swap_default
from uow.testing import EmbeddedPostgres

MakeDatabase = Callable[..., Database]
T = TypeVar("T")
TEST_TABLES = ", ".join(table.name for table in Base.metadata.sorted_tables)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """SQLAlchemy URL of the session's server, with the test tables created."""
    url = os.environ.get("UOW_TEST_DATABASE_URL")
    server = None
    if not url:
        server = EmbeddedPostgres(max_connections=300).start()
        url = server.url
    try:
        with Database(Settings(url=url)) as database:
            Base.metadata.drop_all(database.engine)
            Base.metadata.create_all(database.engine)
        yield Settings(url=url).url
    finally:
        if server is not None:
            server.cleanup()


def libpq_dsn(url: str) -> str:
    """The URL as psycopg.connect() takes it (no SQLAlchemy driver name)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@contextlib.contextmanager
def fresh_database(postgres_url: str, prefix: str, *, migrate: bool) -> Iterator[str]:
    """A new database on the test server, dropped afterwards; migrated to head if asked."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(libpq_dsn(postgres_url), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    try:
        if migrate:
            uow.migrations.upgrade(url, "head")
        yield url
    finally:
        with psycopg.connect(libpq_dsn(postgres_url), autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture
def admin(postgres_url: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection outside any pool, to look at the server from the side."""
    with psycopg.connect(libpq_dsn(postgres_url), autocommit=True) as conn:
        yield conn


@pytest.fixture
def app_name() -> str:
    """A unique application_name, so pg_stat_activity shows only this test's connections."""
    return f"uow-test-{uuid.uuid4().hex[:12]}"


@contextlib.contextmanager
def database_factory(**defaults: Any) -> Iterator[MakeDatabase]:
    """Build Databases with these default settings; each must end with nothing checked out
    (on the primary or any replica), and all are disposed of."""
    made: list[Database] = []

    def make(**settings: Any) -> Database:
        database = Database(Settings(**{**defaults, **settings}))
        made.append(database)
        return database

    try:
        yield make
        for database in made:
            status = database.status()
            busy = [status.checked_out, *(r.checked_out for r in status.replicas)]
            assert not any(busy), f"{database} leaked connections: {busy}"
    finally:
        for database in made:
            database.dispose()


@pytest.fixture
def make_database(postgres_url: str, app_name: str) -> Iterator[MakeDatabase]:
    """Build Databases on the test server; each must end with no connection checked out."""
    with database_factory(url=postgres_url, application_name=app_name) as make:
        yield make


@contextlib.contextmanager
def as_default(database: Database) -> Iterator[Database]:
    """``database`` as the process default for the block; the previous one afterwards."""
    previous = _swap_default(database)
    try:
        yield database
    finally:
        _swap_default(previous)


@pytest.fixture
def database(make_database: MakeDatabase, admin: psycopg.Connection[Any]) -> Iterator[Database]:
    """A default-sized Database, installed as the process default, on empty tables."""
    admin.execute(f"TRUNCATE {TEST_TABLES} RESTART IDENTITY")
    with as_default(make_database()) as db:
        yield db


def connections(admin: psycopg.Connection[Any], app_name: str) -> int:
    """How many server connections the application holds right now."""
    row = admin.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (app_name,)
    ).fetchone()
    assert row is not None
    return int(row[0])


__all__ = ["MakeDatabase", "connections", "idle_in_transaction", "libpq_dsn", "run", "uow"]


@pytest.fixture
def trace() -> Iterator[Callable[[Engine], Trace]]:
    """Start tracing an engine's connections; files are closed after the test."""
    traces: list[Trace] = []

    def start(engine: Engine) -> Trace:
        traces.append(Trace(engine))
        return traces[-1]

    yield start
    for made in traces:
        made.close()


class CapturedLog(logging.Handler):
    """Keeps the records that reach it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def pool_log() -> Iterator[CapturedLog]:
    """A handler on the "sqlalchemy.pool" logger, as SQLAlchemy's logging docs set one up."""
    handler = CapturedLog()
    parent = logging.getLogger("sqlalchemy.pool")
    level = parent.level
    known = set(logging.root.manager.loggerDict)
    parent.addHandler(handler)
    try:
        yield handler
    finally:
        parent.removeHandler(handler)
        parent.setLevel(level)
        # echo_pool gives the pool's own logger a stdout handler; keep it out of later tests.
        for name in set(logging.root.manager.loggerDict) - known:
            logging.getLogger(name).handlers.clear()


# -- asyncio ------------------------------------------------------------------------------
# pytest-asyncio is not used: an async test is a plain function that runs its scenario
# with run() (asyncio.run), so each test gets a fresh event loop and nothing of one
# test's loop can reach the next. Connections belong to the loop that opened them, so a
# test keeps to one scenario per Database; make_adb closes the asyncio pools in a loop
# of their own at teardown, after checking that nothing is checked out.


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
