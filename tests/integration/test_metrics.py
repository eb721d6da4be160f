"""`Database.stats()`: pool gauges, timers and counters move as the pool works, on a real server."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, text

from tests.conftest import MakeDatabase, connections
from tests.helpers import wait_for
from tests.protocol_trace import Trace
from uow import (
    AsyncUnitOfWork,
    Database,
    DatabaseUnavailable,
    PoolExhausted,
    PoolStats,
    UnitOfWork,
)


def unit(database: Database, sql: str = "SELECT 1") -> None:
    """One unit of work running one statement."""
    with UnitOfWork(database) as uow:
        uow.session.execute(text(sql))


class Holder:
    """A thread that holds one connection inside a unit of work until released."""

    def __init__(self, database: Database) -> None:
        self.release = threading.Event()
        self._holding = threading.Event()
        self._database = database
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with UnitOfWork(self._database) as uow:
            uow.session.execute(text("SELECT 1"))
            self._holding.set()
            self.release.wait(10)

    def __enter__(self) -> Holder:
        self._thread.start()
        assert self._holding.wait(5), "the holder did not get a connection"
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release.set()
        self._thread.join(10)


def test_units_count_requests_usage_and_gauges(
    make_database: MakeDatabase, admin: psycopg.Connection[Any], app_name: str
) -> None:
    """N units add N requests, some usage time, one connection opened; gauges end idle."""
    database = make_database(pool_size=2)
    before = database.stats()
    assert before.requests_num == 0 and before.pool_size == 0
    for _ in range(10):
        unit(database, "SELECT pg_sleep(0.001)")
    after = database.stats()
    assert after.requests_num == 10
    assert after.requests_queued == 0 and after.requests_errors == 0
    assert after.usage_ms >= 10 * 1.0
    assert after.requests_wait_ms > 0
    assert after.connections_num == 1 == connections(admin, app_name)
    assert after.connections_ms > 0
    assert (after.pool_min, after.pool_max) == (2, 2)
    assert (after.pool_size, after.pool_available, after.pool_checked_out) == (1, 1, 0)
    assert after.pool_overflow == 0 and after.requests_waiting == 0
    with UnitOfWork(database) as uow:
        uow.session.execute(text("SELECT 1"))
        inside = database.stats()
    assert (inside.pool_checked_out, inside.pool_available) == (1, 0)


def test_connections_opened_match_the_server(
    make_database: MakeDatabase, admin: psycopg.Connection[Any], app_name: str
) -> None:
    """Three units open at once open three backends, and connections_num says 3."""
    database = make_database(pool_size=3)
    with Holder(database), Holder(database), Holder(database):
        stats = database.stats()
        assert stats.connections_num == 3 == connections(admin, app_name)
        assert (stats.pool_size, stats.pool_checked_out, stats.pool_available) == (3, 3, 0)
    assert database.stats().pool_available == 3


def test_a_held_connection_makes_the_next_caller_wait(make_database: MakeDatabase) -> None:
    """A unit holding the only connection queues the next one; its wait is counted."""
    database = make_database(pool_size=1, pool_timeout=10)
    unit(database)  # open the connection first, so the wait below is only queueing
    before = database.stats()
    with Holder(database) as holder:
        waiter = threading.Thread(target=unit, args=(database,))
        waiter.start()
        wait_for(lambda: database.stats().requests_waiting == 1, what="the waiter to queue")
        time.sleep(0.3)
        holder.release.set()
        waiter.join(10)
    after = database.stats()
    assert after.requests_num - before.requests_num == 2
    assert after.requests_queued - before.requests_queued == 1
    assert after.requests_wait_ms - before.requests_wait_ms >= 300
    assert after.usage_ms - before.usage_ms >= 300  # the holder's connection, held 0.3 s
    assert after.requests_waiting == 0 and after.requests_errors == 0


def test_pool_exhausted_counts_a_timeout(make_database: MakeDatabase) -> None:
    """A PoolExhausted is a request error and a timeout, its wait counted too."""
    database = make_database(pool_size=1, pool_timeout=0.2)
    with Holder(database), pytest.raises(PoolExhausted):
        unit(database)
    stats = database.stats()
    assert (stats.requests_timeouts, stats.requests_errors, stats.requests_queued) == (1, 1, 1)
    assert stats.requests_wait_ms >= 200
    assert stats.requests_waiting == 0


def test_a_terminated_connection_is_counted_lost_and_replaced(
    make_database: MakeDatabase, admin: psycopg.Connection[Any], app_name: str
) -> None:
    """pg_terminate_backend of a pooled connection: the next unit counts it lost and reconnects."""
    database = make_database(pool_size=1)
    unit(database)
    admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
        (app_name,),
    )
    wait_for(lambda: connections(admin, app_name) == 0, what="the backend to exit")
    unit(database)
    stats = database.stats()
    assert (stats.connections_lost, stats.invalidations) == (1, 1)
    assert stats.connections_num == 2
    assert stats.requests_errors == 0 and stats.requests_num == 2


def test_recycling_is_an_invalidation_but_not_a_loss(make_database: MakeDatabase) -> None:
    """A connection replaced for its age (pool_recycle) is not counted as lost."""
    database = make_database(pool_size=1, pool_recycle=1)
    unit(database)
    time.sleep(1.05)  # past the jittered deadline, 90-100% of pool_recycle
    unit(database)
    stats = database.stats()
    assert (stats.invalidations, stats.connections_lost, stats.connections_num) == (1, 0, 2)


def test_failed_connects_are_counted(make_database: MakeDatabase) -> None:
    """A server that refuses: a connect error, a request error, then a fast failure."""
    database = make_database(url="postgresql://nobody@127.0.0.1:1/none", check_budget=False)
    for _ in range(2):
        with pytest.raises(DatabaseUnavailable):
            unit(database)
    stats = database.stats()
    assert stats.connections_errors == 1 == database.counters()["connect_failures"]
    assert stats.fast_failures == 1
    assert stats.requests_errors == 2 and stats.requests_timeouts == 0
    assert stats.connections_num == 0 and stats.pool_size == 0


def test_counts_survive_dispose(make_database: MakeDatabase) -> None:
    """dispose() starts a new pool, but the counts carry on."""
    database = make_database(pool_size=1)
    unit(database)
    database.dispose()
    unit(database)
    stats = database.stats()
    assert (stats.requests_num, stats.connections_num, stats.pool_size) == (2, 2, 1)


def test_status_and_counters_are_views_of_stats(make_database: MakeDatabase) -> None:
    """status() and counters() are read from stats()' snapshot; no field is in it twice."""
    database = make_database(pool_size=2)
    unit(database)
    status, stats, counters = database.status(), database.stats(), database.counters()
    assert (status.size, status.idle, status.checked_out, status.waiting) == (
        stats.pool_min,
        stats.pool_available,
        stats.pool_checked_out,
        stats.requests_waiting,
    )
    renamed = {"connect_failures": "connections_errors"}
    assert {name: getattr(stats, renamed.get(name, name)) for name in counters} == counters
    assert list(counters) == [
        "retries",
        "leaks",
        "long_transactions",
        "connect_failures",
        "fast_failures",
        "hung_connections",
    ]
    assert "connect_failures" not in {f.name for f in dataclasses.fields(PoolStats)}


def test_metrics_add_no_round_trip(
    make_database: MakeDatabase, trace: Callable[[Engine], Trace]
) -> None:
    """With the recorder counting, a unit still sends only BEGIN, its statement and COMMIT."""
    database = make_database(pool_size=1)
    trace = trace(database.engine)
    unit(database)
    trace.take()
    unit(database)
    assert trace.take() == (3, ["BEGIN", "SELECT 1", "COMMIT"])
    assert database.stats().requests_num == 2


def test_async_units_are_counted_the_same_way(make_database: MakeDatabase) -> None:
    """The asyncio pool records requests, waits, timeouts and usage; stats() adds it in."""
    database = make_database(pool_size=1, pool_timeout=0.3)
    unit(database)  # the sync pool's counts are part of the sum

    async def scenario() -> PoolStats:
        async def one(hold: float = 0.0) -> None:
            async with AsyncUnitOfWork(database) as uow:
                await uow.session.execute(text("SELECT 1"))
                await asyncio.sleep(hold)

        try:
            for _ in range(5):
                await one()
            holder = asyncio.create_task(one(hold=0.2))
            await asyncio.sleep(0.05)
            await one()  # queues behind the holder for about 0.15 s
            await holder
            holder = asyncio.create_task(one(hold=0.6))
            await asyncio.sleep(0.05)
            with pytest.raises(PoolExhausted):
                await one()
            await holder
            return database.stats()
        finally:
            await database.dispose_async()

    stats = asyncio.run(scenario())
    assert stats.requests_num == 1 + 5 + 2 + 2
    # One budget for both pools: the first async unit queues until the sync pool closes
    # its idle connection, which holds the only slot.
    assert (stats.requests_queued, stats.requests_timeouts, stats.requests_errors) == (3, 1, 1)
    assert stats.requests_wait_ms >= 100 + 300
    assert stats.usage_ms >= 200 + 600
    assert stats.connections_num == 2  # one per pool
    # One limit shared by both pools, not one each.
    assert (stats.pool_min, stats.pool_max, stats.requests_waiting) == (1, 1, 0)
    assert stats.pool_checked_out == 0
