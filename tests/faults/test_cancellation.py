"""Cancellation: tasks cancelled at every point of a unit of work leave nothing behind.

A task may be cancelled while it waits for a pooled connection, while the server runs
its statement, while its unit commits, while it rolls back, or by ``asyncio.timeout``.
Whatever the point, the task must end cancelled (CancelledError, or TimeoutError from
``asyncio.timeout``), its connection must go back to the pool (or be replaced), no
session may stay idle in transaction, and its work must be committed exactly when its
COMMIT was sent: the end of a unit runs to completion once started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from sqlalchemy import text

from tests.conftest import MakeDatabase, connections, idle_in_transaction, run
from tests.faults.helpers import kind
from tests.helpers import wait_for
from tests.models import Item
from uow import AsyncRepository, AsyncUnitOfWork, Database

Admin = psycopg.Connection[Any]

POOL_SIZE = 4
TASKS = 2000
IN_FLIGHT = 100  # tasks alive at once: about 96 of them queue for the 4 connections
LIMIT = 240.0  # seconds for all the tasks: a bound on a hang, not a speed test
# A statement cancelled costs most (a cancel request, then a new connection): fewer of them.
POINTS = {"none": 1, "checkout": 3, "statement": 2, "commit": 3, "rollback": 3}
BY_TIMEOUT = 0.3  # the share of cancellations made by asyncio.timeout() instead of cancel()
PHASES = {
    "checkout": "waiting for a connection",
    "statement": "in a statement",
    "commit": "committing",
    "rollback": "rolling back",
}
SELECT_1 = text("SELECT 1")
SLEEP = text("SELECT pg_sleep(:s)")


class Shop(AsyncUnitOfWork):
    items: AsyncRepository[Item]


class Boom(Exception):
    """The application's own error, raised inside a block."""


def rows(admin: Admin) -> set[str]:
    return {name for (name,) in admin.execute("SELECT name FROM uow_test_items")}


def running_sleeps(admin: Admin, app_name: str) -> int:
    row = admin.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
        " AND state = 'active' AND query LIKE '%%pg_sleep%%'",
        (app_name,),
    ).fetchone()
    assert row is not None
    return int(row[0])


async def full_round(db: Database, units: int) -> set[int]:
    """Run ``units`` concurrent units, the first pool_size of them holding their connection
    together (so every slot of the pool must be free); return the backend pids used."""
    meet = asyncio.Barrier(POOL_SIZE)
    pids: set[int] = set()

    async def one(i: int) -> None:
        async with AsyncUnitOfWork(db) as unit:
            pids.add((await unit.session.execute(text("SELECT pg_backend_pid()"))).scalar_one())
            if i < POOL_SIZE:
                await meet.wait()

    async with asyncio.timeout(10):
        await asyncio.gather(*(one(i) for i in range(units)))
    return pids


# -- one point at a time ------------------------------------------------------------------


def test_cancel_while_waiting_for_a_connection(make_adb: MakeDatabase) -> None:
    """Tasks cancelled in the pool's queue end cancelled and take no slot with them."""
    db = make_adb(pool_size=POOL_SIZE, max_overflow=0, pool_timeout=10)

    async def scenario() -> tuple[list[bool], set[int]]:
        release = asyncio.Event()

        async def hold() -> None:
            async with AsyncUnitOfWork(db) as unit:
                await unit.session.execute(SELECT_1)
                await release.wait()

        async def wait() -> None:
            async with AsyncUnitOfWork(db) as unit:
                await unit.session.execute(SELECT_1)

        holders = [asyncio.create_task(hold()) for _ in range(POOL_SIZE)]
        await asyncio.to_thread(
            wait_for, lambda: db.async_engine.pool.checkedout() == POOL_SIZE, what="hold"
        )
        waiters = [asyncio.create_task(wait()) for _ in range(50)]
        await asyncio.sleep(0.05)
        for waiter in waiters:
            waiter.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
        release.set()
        await asyncio.gather(*holders)
        return [w.cancelled() for w in waiters], await full_round(db, 20)

    cancelled, pids = run(scenario())
    assert all(cancelled)
    assert len(pids) == POOL_SIZE


def test_cancel_during_a_statement(make_adb: MakeDatabase, admin: Admin, app_name: str) -> None:
    """Cancelled mid-statement: CancelledError within 1 s, server query stopped, rolled back."""
    db = make_adb(pool_size=POOL_SIZE, max_overflow=0)

    async def scenario() -> tuple[bool, BaseException | None, float]:
        async def body() -> None:
            async with Shop(db) as unit:
                unit.items.add(Item(name="apple"))
                await unit.flush()
                await unit.session.execute(text("SELECT pg_sleep(5)"))

        task = asyncio.create_task(body())
        await asyncio.to_thread(
            wait_for, lambda: running_sleeps(admin, app_name) == 1, what="pg_sleep"
        )
        started = time.monotonic()
        task.cancel()
        error = None
        try:
            await task
        except BaseException as exc:
            error = exc
        took = time.monotonic() - started
        await asyncio.to_thread(
            wait_for, lambda: running_sleeps(admin, app_name) == 0, what="server cancel"
        )
        return task.cancelled(), error, took

    cancelled, error, took = run(scenario())
    assert cancelled, f"the cancelled task raised {error!r} instead of CancelledError"
    assert took < 1.0
    assert rows(admin) == set()


def test_cancel_while_committing_still_commits(make_adb: MakeDatabase, admin: Admin) -> None:
    """Cancelled while its unit commits: the commit completes, then the task ends cancelled."""
    db = make_adb(pool_size=POOL_SIZE, max_overflow=0)
    ended: list[str] = []

    async def scenario() -> bool:
        async def body() -> None:
            async with Shop(db) as unit:
                unit.items.add(Item(name="apple"))
                unit.on_commit(lambda: ended.append("committed"))
                asyncio.get_running_loop().call_soon(task.cancel)  # lands in the commit
            ended.append("returned")

        task = asyncio.create_task(body())
        with pytest.raises(asyncio.CancelledError):
            await task
        return task.cancelled()

    assert run(scenario())
    assert ended == ["committed"]
    assert rows(admin) == {"apple"}


def test_cancel_while_rolling_back_still_rolls_back(make_adb: MakeDatabase, admin: Admin) -> None:
    """Cancelled during the rollback after an error: it completes; the task ends cancelled."""
    db = make_adb(pool_size=1, max_overflow=0)

    async def scenario() -> tuple[bool, BaseException | None, str]:
        async def body() -> None:
            async with Shop(db) as unit:
                unit.items.add(Item(name="apple"))
                await unit.flush()
                asyncio.get_running_loop().call_soon(task.cancel)  # lands in the rollback
                raise Boom

        task = asyncio.create_task(body())
        with pytest.raises(asyncio.CancelledError) as info:
            await task
        async with AsyncUnitOfWork(db) as unit:  # the same, only connection
            status = (await unit.session.execute(text("SELECT 'usable'"))).scalar_one()
        return task.cancelled(), info.value.__context__, status

    cancelled, context, status = run(scenario())
    assert cancelled
    assert isinstance(context, Boom)  # the error being handled is kept as the context
    assert status == "usable"
    assert rows(admin) == set()


def test_asyncio_timeout_around_a_unit(make_adb: MakeDatabase, admin: Admin) -> None:
    """asyncio.timeout() around a unit stuck in a statement raises TimeoutError in time."""
    db = make_adb(pool_size=POOL_SIZE, max_overflow=0)

    async def scenario() -> tuple[str, float]:
        started = time.monotonic()
        try:
            async with asyncio.timeout(0.2), Shop(db) as unit:
                unit.items.add(Item(name="apple"))
                await unit.session.execute(text("SELECT pg_sleep(5)"))
        except BaseException as exc:
            return type(exc).__name__, time.monotonic() - started
        return "returned", time.monotonic() - started

    outcome, took = run(scenario())
    assert outcome == "TimeoutError", f"{outcome} after {took:.2f}s"
    assert took < 1.0
    assert rows(admin) == set()


# -- thousands at random points -----------------------------------------------------------


@dataclass
class Attempt:
    """One task's unit of work: where it is to be cancelled and how, and what happened."""

    n: int
    point: str  # the phase in which to cancel it ("none": never)
    by_timeout: bool  # cancel it through asyncio.timeout() rather than task.cancel()
    phase: str = "start"  # where its unit is now
    landed: str | None = None  # the phase it was in when cancelled (or timed out)
    outcome: str = ""  # "returned", "CancelledError", "TimeoutError", "Boom" or another error

    @property
    def name(self) -> str:
        return f"c{self.n}"


async def attempt(db: Database, unit: Attempt, rng: random.Random) -> None:
    """Run one unit, cancelling its own task at the planned point; record the outcome.

    With ``by_timeout`` the unit runs inside ``asyncio.timeout()``, whose deadline is set,
    at the planned point, a random few milliseconds ahead.
    """
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    scope = asyncio.timeout(None)

    def cancel_in(delay: float) -> None:
        if unit.by_timeout:
            scope.reschedule(loop.time() + delay)
            return

        def fire() -> None:
            if not task.done():
                unit.landed = unit.phase
                task.cancel()

        loop.call_later(delay, fire)

    async def body() -> None:
        async with Shop(db) as work:
            unit.phase = "checkout"
            if unit.point == "checkout":
                cancel_in(rng.uniform(0, 0.003))
            await work.session.execute(SELECT_1)  # the first statement checks out a connection
            unit.phase = "statement"
            if unit.point == "statement":
                seconds = rng.uniform(0.01, 0.05)
                cancel_in(rng.uniform(0.003, seconds))
                await work.session.execute(SLEEP, {"s": seconds})
            work.items.add(Item(name=unit.name))
            if unit.point == "rollback":
                await work.flush()
                unit.phase = "rollback"
                cancel_in(rng.uniform(0, 0.001))
                raise Boom
            unit.phase = "commit"
            if unit.point == "commit":
                cancel_in(rng.uniform(0, 0.002))
        unit.phase = "returned"

    try:
        async with scope:
            await body()
    except asyncio.CancelledError:
        unit.outcome = "CancelledError"
    except TimeoutError:
        unit.outcome = "TimeoutError"
    except Exception as exc:
        unit.outcome = kind(exc)
    else:
        unit.outcome = "returned"
    if scope.expired():
        unit.landed = unit.phase  # the phase does not change once the deadline has passed


class _Logged(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.messages[record.getMessage()[:60]] += 1


def test_thousands_of_tasks_cancelled_at_random_points(
    make_adb: MakeDatabase, admin: Admin, app_name: str
) -> None:
    """2000 tasks cancelled at random points: pool whole, none idle in transaction, rows exact."""
    db = make_adb(pool_size=POOL_SIZE, max_overflow=0, pool_timeout=10)
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    points, weights = list(POINTS), list(POINTS.values())
    units = [
        Attempt(n, rng.choices(points, weights)[0], rng.random() < BY_TIMEOUT) for n in range(TASKS)
    ]
    logged = _Logged()
    logging.getLogger("uow").addHandler(logged)

    async def storm() -> tuple[int, set[int]]:
        slots = asyncio.Semaphore(IN_FLIGHT)
        tasks: list[asyncio.Task[None]] = []
        async with asyncio.timeout(LIMIT):
            for unit in units:
                await slots.acquire()
                task = asyncio.create_task(attempt(db, unit, random.Random(seed + unit.n)))
                task.add_done_callback(lambda _: slots.release())
                tasks.append(task)
            await asyncio.wait(tasks)
        checked_out = db.async_engine.pool.checkedout()
        return checked_out, await full_round(db, 40)

    started = time.monotonic()
    try:
        checked_out, pids = run(storm())
    finally:
        logging.getLogger("uow").removeHandler(logged)
    elapsed = time.monotonic() - started
    stuck = idle_in_transaction(admin, app_name)
    with contextlib.suppress(AssertionError):  # the check below says how many stayed
        # Discarded connections' server processes exit a moment later.
        wait_for(lambda: connections(admin, app_name) <= POOL_SIZE, timeout=5, what="exits")
    sessions = connections(admin, app_name)
    stored = rows(admin)

    ran = [unit for unit in units if unit.outcome]
    outcomes = Counter(unit.outcome for unit in ran)
    cancelled = Counter(unit.landed for unit in ran if unit.outcome == "CancelledError")
    timed_out = Counter(unit.landed for unit in ran if unit.outcome == "TimeoutError")
    returned = {unit.name for unit in ran if unit.outcome == "returned"}
    after_commit = {
        unit.name
        for unit in ran
        if unit.outcome in ("CancelledError", "TimeoutError") and unit.landed == "commit"
    }
    unexpected = {
        name: count
        for name, count in outcomes.items()
        if name not in ("returned", "CancelledError", "TimeoutError", "Boom")
    }
    errors_at = Counter(unit.landed or unit.phase for unit in ran if unit.outcome in unexpected)
    print(
        f"\n[cancellation] {len(ran)} tasks ({IN_FLIGHT} at a time on pool_size={POOL_SIZE}) "
        f"in {elapsed:.1f}s, seed {seed}: cancelled "
        + ", ".join(f"{PHASES[p]} {cancelled[p]}" for p in PHASES)
        + f"; asyncio.timeout fired {sum(timed_out.values())} ("
        + ", ".join(f"{PHASES[p]} {timed_out[p]}" for p in PHASES)
        + f"); completed {len(returned)}; raised Boom {outcomes['Boom']}; "
        f"other errors {unexpected or 0}{f' at {dict(errors_at)}' if unexpected else ''}; "
        f"rows {len(stored)} = {len(returned)} completed + {len(after_commit)} cancelled "
        f"while committing (the commit completed); end: checked_out={checked_out}, "
        f"round of 40 units on {len(pids)} backends, {sessions} server sessions, "
        f"{len(stuck)} idle in transaction; uow warnings {dict(logged.messages) or 0}"
    )
    assert len(ran) == TASKS, f"only {len(ran)} of {TASKS} tasks ran"
    assert checked_out == 0
    assert len(pids) == POOL_SIZE  # every slot free again, no more connections than the pool
    assert sessions <= POOL_SIZE
    assert not stuck, f"sessions left idle in transaction: {stuck}"
    assert len(stored) <= TASKS
    assert returned <= stored, f"completed units missing: {sorted(returned - stored)[:5]}"
    extra = stored - returned - after_commit
    assert not extra, f"rows of units that ended before their commit: {sorted(extra)[:5]}"
    assert after_commit <= stored, f"commits lost: {sorted(after_commit - stored)[:5]}"
    assert not unexpected, f"cancelled tasks raised {unexpected} instead of CancelledError"
    hit = Counter((unit.by_timeout, unit.landed) for unit in ran if unit.landed)
    assert all(hit[False, p] and hit[True, p] for p in PHASES), f"points never hit: {hit}"
