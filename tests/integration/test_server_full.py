"""A full server (SQLSTATE 53300) is ServerFull: not an outage, retried, used once a slot frees."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import text

import uow
from tests.conftest import run
from tests.tls import tls_bin_dir
from uow import (
    AsyncUnitOfWork,
    Database,
    DatabaseUnavailable,
    ServerFull,
    Settings,
    TransientError,
    UnitOfWork,
)
from uow.testing import EmbeddedPostgres

MAX_CONNECTIONS = 6
RESERVED = 3  # superuser_reserved_connections: an application role gets 3 slots
APP_SLOTS = MAX_CONNECTIONS - RESERVED


class Server:
    """A throwaway server with a tiny max_connections and an application role."""

    def __init__(self, postgres: EmbeddedPostgres) -> None:
        self.postgres = postgres
        with psycopg.connect(postgres.dsn, autocommit=True) as admin:
            admin.execute("CREATE ROLE app LOGIN PASSWORD 'app-secret'")
        where = f"{postgres.host}:{postgres.port}/postgres"
        self.url = f"postgresql+psycopg://app:app-secret@{where}"
        self.app_dsn = f"host={postgres.host} port={postgres.port} dbname=postgres user=app"
        self.held: list[psycopg.Connection[Any]] = []

    def fill(self, count: int, *, superuser: bool = False) -> None:
        """Hold ``count`` more connections (as the application role unless ``superuser``)."""
        dsn = self.postgres.dsn if superuser else f"{self.app_dsn} password=app-secret"
        self.held += [psycopg.connect(dsn) for _ in range(count)]

    def free(self, count: int = 1) -> None:
        for _ in range(min(count, len(self.held))):
            self.held.pop().close()

    def database(self, **settings: Any) -> Database:
        return Database(Settings(url=self.url, pool_timeout=2, **settings))


@pytest.fixture(scope="module", params=["wheel", "system"])
def postgres(request: pytest.FixtureRequest) -> Iterator[EmbeddedPostgres]:
    """The embedded wheel's PostgreSQL (18) and the system's (15 here): their texts differ."""
    with EmbeddedPostgres(
        max_connections=MAX_CONNECTIONS,
        settings={"superuser_reserved_connections": RESERVED},
        bin_dir=tls_bin_dir() if request.param == "system" else None,
    ) as server:
        yield server


@pytest.fixture
def server(postgres: EmbeddedPostgres) -> Iterator[Server]:
    with psycopg.connect(postgres.dsn, autocommit=True) as admin:
        admin.execute("DROP ROLE IF EXISTS app")
    full = Server(postgres)
    try:
        yield full
    finally:
        full.free(len(full.held))


def select_one(database: Database) -> int:
    with UnitOfWork(database) as unit:
        return int(unit.session.execute(text("SELECT 1")).scalar_one())


def test_a_full_server_is_server_full_with_the_numbers_and_no_backoff(server: Server) -> None:
    """Reserved-slots FATAL: ServerFull with the numbers, no fast failures, no backoff after."""
    database = server.database(pool_size=2, max_overflow=0)
    try:
        assert select_one(database) == 1  # reads the budget; one slot stays pooled
        server.fill(APP_SLOTS - 1)
        with database.engine.connect():  # holds the pooled connection: the next one is new
            for _ in range(5):  # enough failures for an outage backoff of 0.25 s
                with pytest.raises(ServerFull) as info:
                    select_one(database)
            message = str(info.value)
            assert "remaining connection slots are reserved" in message
            assert "SQLSTATE 53300" in message and "unreachable" not in message
            assert f"max_connections={MAX_CONNECTIONS} with {RESERVED} reserved" in message
            assert "pool_size + max_overflow = 2 + 0 = 2 connections" in message
            assert "UOW_POOL_SIZE" in message and "PgBouncer" in message
            assert isinstance(info.value, DatabaseUnavailable | TransientError)
            server.free()
            assert select_one(database) == 1  # at once: no backoff refuses it
        counters = database.counters()
        assert counters["fast_failures"] == 0
        assert counters["connect_failures"] == 5
        assert database.status().checked_out == 0
    finally:
        database.dispose()


def test_too_many_clients_is_server_full(server: Server) -> None:
    """'sorry, too many clients already' (every slot taken, even the reserved ones) is too."""
    server.fill(MAX_CONNECTIONS, superuser=True)
    database = Database(Settings(url=server.postgres.url, check_budget=False))
    try:
        with pytest.raises(ServerFull, match="too many clients already") as info:
            select_one(database)
        assert server.postgres.password not in str(info.value)
        assert database.counters()["fast_failures"] == 0
    finally:
        database.dispose()


def test_async_units_raise_server_full(server: Server) -> None:
    """AsyncUnitOfWork gets the same ServerFull, and the slot is used as soon as it frees."""
    database = server.database(check_budget=False)
    server.fill(APP_SLOTS)

    async def scenario() -> None:
        for _ in range(3):
            with pytest.raises(ServerFull, match="SQLSTATE 53300"):
                async with AsyncUnitOfWork(database) as unit:
                    await unit.session.execute(text("SELECT 1"))
        server.free()
        async with AsyncUnitOfWork(database) as unit:
            assert (await unit.session.execute(text("SELECT 1"))).scalar_one() == 1
        await database.dispose_async()

    try:
        run(scenario())
        assert database.counters()["fast_failures"] == 0
    finally:
        database.dispose()


@pytest.mark.parametrize("wait", [None, 0], ids=["failover_wait", "retries"])
@pytest.mark.parametrize("how", ["run_transaction", "transactional"])
def test_retries_wait_for_a_slot_to_free(server: Server, how: str, wait: float | None) -> None:
    """run_transaction and @transactional retry ServerFull until a slot frees (0.5 s here):
    within the failover wait, and with wait=0 within retries."""
    database = server.database(check_budget=False)
    server.fill(APP_SLOTS)
    threading.Timer(0.5, server.free).start()
    started = time.monotonic()
    try:
        if how == "run_transaction":
            result = uow.run_transaction(
                lambda unit: unit.session.execute(text("SELECT 1")).scalar_one(),
                database=database,
                retries=30,
                max_backoff=0.2,
                wait=wait,
            )
        else:

            @uow.transactional(database=database, retries=30, max_backoff=0.2, wait=wait)
            def select(unit: UnitOfWork) -> Any:
                return unit.session.execute(text("SELECT 1")).scalar_one()

            result = select()
        assert result == 1
        assert time.monotonic() - started < 5.0
        assert database.counters()["retries"] >= 1
        assert database.counters()["fast_failures"] == 0
    finally:
        database.dispose()
