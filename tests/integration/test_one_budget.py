"""One connection budget per process: sync and async units share pool_size + max_overflow."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine, Iterator
from concurrent.futures import Future
from typing import Any, TypeVar

import psycopg
import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import text

import uow.prometheus
from tests.conftest import MakeDatabase, connections, libpq_dsn
from tests.helpers import wait_for
from tests.integration.test_prometheus import scrape
from uow import AsyncUnitOfWork, Database, PoolExhausted, UnitOfWork

T = TypeVar("T")


class Loop:
    """An event loop on a thread of its own, as a web server runs async endpoints."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def loop(make_adb: MakeDatabase) -> Iterator[Loop]:
    """A running event loop; its asyncio pools are closed on it at teardown."""
    running = Loop()
    yield running
    running.close()


def close_async(loop: Loop, database: Database) -> None:
    """Close the asyncio pool's idle connections on the loop that opened them."""
    loop.submit(database.dispose_async()).result(10)


class Holder:
    """A unit of work of either kind that holds its connection until released."""

    def __init__(self, database: Database, loop: Loop, *, asynchronous: bool) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.done: Future[None]
        if asynchronous:
            self.done = loop.submit(self._hold_async(database))
        else:
            self.done = Future()
            threading.Thread(target=self._hold_sync, args=(database,), daemon=True).start()

    def _hold_sync(self, database: Database) -> None:
        try:
            with UnitOfWork(database) as unit:
                unit.session.execute(text("SELECT 1"))
                self.entered.set()
                self.release.wait(30)
        except BaseException as exc:
            self.done.set_exception(exc)
        else:
            self.done.set_result(None)

    async def _hold_async(self, database: Database) -> None:
        async with AsyncUnitOfWork(database) as unit:
            await unit.session.execute(text("SELECT 1"))
            self.entered.set()
            while not self.release.is_set():  # never blocks the loop
                await asyncio.sleep(0.01)

    def finish(self) -> None:
        self.release.set()
        self.done.result(30)


def hold(database: Database, loop: Loop, *kinds: bool) -> list[Holder]:
    """Start one holder per kind (True: async) and wait until each holds a connection."""
    holders = [Holder(database, loop, asynchronous=kind) for kind in kinds]
    for holder in holders:
        wait_for(holder.entered.is_set, timeout=20, what="a unit of work to get a connection")
    return holders


def watch(admin: psycopg.Connection[Any], app_name: str) -> tuple[threading.Event, list[int]]:
    """Sample the application's server connections every 20 ms until the event is set."""
    stop, seen = threading.Event(), [0]

    def sample() -> None:
        while not stop.is_set():
            seen.append(connections(admin, app_name))
            time.sleep(0.02)

    threading.Thread(target=sample, daemon=True).start()
    return stop, seen


def test_both_kinds_hold_at_most_the_budget_and_hand_over(
    make_adb: MakeDatabase, loop: Loop, postgres_url: str, app_name: str
) -> None:
    """3 sync + 2 async units fill pool_size=5; a 6th of either kind waits, and gets the
    connection any kind releases; the server never sees more than 5 connections."""
    database = make_adb(pool_size=5, max_overflow=0, pool_timeout=20)
    with psycopg.connect(libpq_dsn(postgres_url), autocommit=True) as admin:
        stop, seen = watch(admin, app_name)
        try:
            held = hold(database, loop, False, False, False, True, True)
            async_waiter = Holder(database, loop, asynchronous=True)
            time.sleep(0.3)
            assert not async_waiter.entered.is_set()
            held[0].finish()  # a sync release wakes the asyncio waiter
            wait_for(async_waiter.entered.is_set, timeout=10, what="the async waiter")
            sync_waiter = Holder(database, loop, asynchronous=False)
            time.sleep(0.3)
            assert not sync_waiter.entered.is_set()
            held[3].finish()  # an asyncio release wakes the sync waiter
            wait_for(sync_waiter.entered.is_set, timeout=10, what="the sync waiter")
            stats = database.stats()
            assert (stats.pool_max, stats.pool_checked_out) == (5, 5)
            assert database.status().size == 5
            registry = CollectorRegistry()
            uow.prometheus.register(database, registry)
            assert scrape(registry)[("uow_pool_max", (("pool", "primary"),))] == 5
            for holder in [*held[1:3], held[4], async_waiter, sync_waiter]:
                holder.finish()
        finally:
            stop.set()
            close_async(loop, database)
    assert max(seen) == 5, seen


def test_a_waiter_of_either_kind_times_out_as_pool_exhausted(
    make_adb: MakeDatabase, loop: Loop
) -> None:
    """With the budget held by both kinds, a sync and an async unit time out as PoolExhausted."""
    database = make_adb(pool_size=5, max_overflow=0, pool_timeout=0.5)
    held = hold(database, loop, False, False, False, True, True)
    try:
        started = time.monotonic()
        with pytest.raises(PoolExhausted, match="share that budget"), UnitOfWork(database) as u:
            u.session.execute(text("SELECT 1"))
        assert 0.4 < time.monotonic() - started < 5

        async def one() -> None:
            async with AsyncUnitOfWork(database) as unit:
                await unit.session.execute(text("SELECT 1"))

        started = time.monotonic()
        with pytest.raises(PoolExhausted):
            loop.submit(one()).result(10)
        assert 0.4 < time.monotonic() - started < 5
    finally:
        for holder in held:
            holder.finish()
        close_async(loop, database)


@pytest.mark.parametrize("idle_kind", ["sync", "async"])
def test_idle_connections_of_one_kind_do_not_starve_the_other(
    make_adb: MakeDatabase, loop: Loop, postgres_url: str, app_name: str, idle_kind: str
) -> None:
    """Five idle connections of one kind are closed for five units of the other kind."""
    database = make_adb(pool_size=5, max_overflow=0, pool_timeout=10)
    first = idle_kind == "async"
    for holder in hold(database, loop, *[first] * 5):
        holder.finish()
    assert database.stats().pool_available == 5
    with psycopg.connect(libpq_dsn(postgres_url), autocommit=True) as admin:
        stop, seen = watch(admin, app_name)
        try:
            for holder in hold(database, loop, *[not first] * 5):
                holder.finish()
        finally:
            stop.set()
            close_async(loop, database)
    assert max(seen) <= 5, seen
