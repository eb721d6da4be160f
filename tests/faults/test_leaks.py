"""Leak regression: thousands of units of work, ending every way a block can end, at once."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import random
import threading
import time
import weakref
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import psycopg
from sqlalchemy.exc import DataError, IntegrityError

from tests.faults.driver import Driver
from tests.faults.helpers import FaultWatch, kind
from tests.helpers import wait_for
from tests.models import Item, ShopUnitOfWork
from uow import AsyncRepository, AsyncUnitOfWork, Database, TransactionRolledBack

UNITS = 2000
WORKERS = 6
LIMIT = 240.0  # seconds for all the units: a bound on a hang, not a speed test


class Boom(Exception):
    """The application's own error, raised inside a block."""


# Each ending runs one unit of work that writes row u<n>, and returns whether that row
# must be committed: only the units that leave their block without an exception.
Ending = Callable[[Driver, Database, int], bool]


def clean_exit(driver: Driver, db: Database, n: int) -> bool:
    with driver.unit(db) as unit:
        unit.add(Item(name=f"u{n}"))
    return True


def early_return(driver: Driver, db: Database, n: int) -> bool:
    with driver.unit(db) as unit:
        unit.add(Item(name=f"u{n}"))
        unit.flush()
        return True  # leaves the block half way: a clean exit, so it commits


def raised(driver: Driver, db: Database, n: int) -> bool:
    with contextlib.suppress(Boom), driver.unit(db) as unit:
        unit.add(Item(name=f"u{n}"))
        unit.flush()
        raise Boom
    return False


def database_error(driver: Driver, db: Database, n: int) -> bool:
    with contextlib.suppress(DataError), driver.unit(db) as unit:
        unit.add(Item(name=f"u{n}"))
        unit.flush()
        unit.execute("SELECT 1 / 0")
    return False


def keyboard_interrupt(driver: Driver, db: Database, n: int) -> bool:
    try:
        with driver.unit(db) as unit:
            unit.add(Item(name=f"u{n}"))
            unit.flush()
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        return False


def _yielding(driver: Driver, db: Database, n: int, box: list[object]) -> Iterator[int]:
    with driver.unit(db) as unit:
        unit.add(Item(name=f"u{n}"))
        unit.flush()
        yield n
        unit.add(Item(name=f"u{n}-never"))  # the consumer never comes back


def generator_closed(driver: Driver, db: Database, n: int) -> bool:
    rows = _yielding(driver, db, n, [])
    next(rows)
    rows.close()  # GeneratorExit inside the block
    return False


def generator_dropped(driver: Driver, db: Database, n: int) -> bool:
    rows = _yielding(driver, db, n, [])
    next(rows)
    del rows  # the last reference: CPython finalises the generator right here
    return False


def nested_failure(driver: Driver, db: Database, n: int) -> bool:
    try:
        with driver.unit(db) as outer:
            outer.add(Item(name=f"u{n}"))
            with contextlib.suppress(Boom), driver.unit(db) as inner:
                inner.add(Item(name=f"u{n}-inner"))
                raise Boom
    except TransactionRolledBack:
        return False
    raise AssertionError("a unit of work committed although a unit that joined it failed")


def savepoint_failure(driver: Driver, db: Database, n: int) -> bool:
    with driver.unit(db) as unit:
        unit.add(Item(name=f"u{n}"))
        unit.flush()
        try:
            with unit.savepoint():
                unit.add(Item(name=f"u{n}"))  # the same unique name again
                unit.flush()
        except IntegrityError as exc:
            assert isinstance(exc.orig, psycopg.errors.UniqueViolation), repr(exc.orig)
        else:
            raise AssertionError("a duplicate name was accepted")
    return True  # the savepoint's row is undone, the unit's own row commits


# -- endings only one kind of unit has ----------------------------------------------------

# Automatic collection is off during the stress test and each collected generator is made
# garbage and collected under this lock: gc.collect() returns at once while another thread
# is collecting, and a generator left for a later collection would still hold its
# connection at the end check. Finalisation from another thread is pinned separately, by
# test_thread_works_after_its_generator_is_collected_elsewhere.
_COLLECTING = threading.Lock()


def generator_collected(driver: Driver, db: Database, n: int) -> bool:
    with _COLLECTING:
        box: list[object] = []
        rows = _yielding(driver, db, n, box)
        next(rows)
        box.append(rows)  # a reference cycle: only the cyclic garbage collector can finalise it
        alive = weakref.ref(rows)
        del rows, box
        gc.collect()
        assert alive() is None, "the collector did not finalise the abandoned generator"
    return False


class Shop(AsyncUnitOfWork):
    items: AsyncRepository[Item]


async def _cancelled(db: Database, n: int) -> bool:
    inside = asyncio.Event()

    async def body() -> None:
        async with Shop(db) as unit:
            unit.items.add(Item(name=f"u{n}"))
            await unit.flush()
            inside.set()
            await asyncio.sleep(60)  # an await on something else than the database

    task = asyncio.create_task(body())
    await inside.wait()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert task.cancelled()
    return False


async def _cancelled_error_raised(db: Database, n: int) -> bool:
    try:
        async with Shop(db) as unit:
            unit.items.add(Item(name=f"u{n}"))
            await unit.flush()
            raise asyncio.CancelledError
    except asyncio.CancelledError:
        return False


async def _timed_out(db: Database, n: int) -> bool:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(None) as deadline, Shop(db) as unit:
            unit.items.add(Item(name=f"u{n}"))
            await unit.flush()
            deadline.reschedule(asyncio.get_running_loop().time() + 0.002)
            await asyncio.sleep(60)  # expires here, not in a statement (test_cancellation's)
    return False


async def _async_yielding(db: Database, n: int) -> AsyncIterator[int]:
    async with Shop(db) as unit:
        unit.items.add(Item(name=f"u{n}"))
        await unit.flush()
        yield n
        unit.items.add(Item(name=f"u{n}-never"))  # the consumer never comes back


async def _async_generator_closed(db: Database, n: int) -> bool:
    rows = _async_yielding(db, n)
    await anext(rows)
    await rows.aclose()  # GeneratorExit inside the block
    return False


async def _async_generator_dropped(db: Database, n: int) -> bool:
    rows = _async_yielding(db, n)
    await anext(rows)
    del rows  # the loop's finaliser closes it later, in a task of its own
    return False


def awaited(scenario: Callable[[Database, int], Awaitable[bool]]) -> Ending:
    """An ending written as asyncio code, awaited from the driver's worker."""

    def ending(driver: Driver, db: Database, n: int) -> bool:
        assert driver.asynchronous
        return driver.call(lambda: False, lambda: scenario(db, n))

    return ending


COMMON: dict[str, tuple[Ending, int]] = {
    "clean": (clean_exit, 20),
    "early_return": (early_return, 10),
    "raise": (raised, 12),
    "db_error": (database_error, 8),
    "keyboard_interrupt": (keyboard_interrupt, 8),
    "generator_close": (generator_closed, 6),
    "generator_drop": (generator_dropped, 6),
    "nested_failure": (nested_failure, 8),
    "savepoint_failure": (savepoint_failure, 8),
}
ONLY: dict[str, dict[str, tuple[Ending, int]]] = {
    "sync": {"generator_gc": (generator_collected, 4)},
    "async": {
        "cancelled": (awaited(_cancelled), 8),
        "cancelled_error": (awaited(_cancelled_error_raised), 4),
        "timeout": (awaited(_timed_out), 6),
        "async_generator_close": (awaited(_async_generator_closed), 4),
        "async_generator_drop": (awaited(_async_generator_dropped), 4),
    },
}


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        cause = record.exc_info[1] if record.exc_info else None
        self.messages[f"{record.getMessage()} [{type(cause).__name__}]"] += 1


def test_no_leak_whatever_way_units_end(fault: FaultWatch, driver: Driver) -> None:
    """2000 units ending every way a block can, in 6 workers: no leak, only clean exits commit."""
    db = fault.database(pool_size=4, max_overflow=0, pool_timeout=5)
    endings = COMMON | ONLY[driver.name]
    seed = random.randrange(2**32)
    names, weights = list(endings), [weight for _, weight in endings.values()]
    lock = threading.Lock()
    issued = 0
    done: Counter[str] = Counter()
    expected: set[str] = set()
    logged = _Errors()
    logging.getLogger("uow").addHandler(logged)

    def worker(t: int) -> None:
        nonlocal issued
        rng = random.Random(seed + t)
        while True:
            with lock:
                n, issued = issued, issued + 1
            if n >= UNITS:
                return
            ending = rng.choices(names, weights)[0]
            committed = endings[ending][0](driver, db, n)
            with lock:
                done[ending] += 1
                if committed:
                    expected.add(f"u{n}")

    started = time.monotonic()
    gc.disable()
    try:
        with fault.sampling(interval=0.02) as sampler:
            driver.run(WORKERS, worker, timeout=LIMIT)
            # Dropped async generators are closed by tasks the loop's finaliser started.
            settle = time.monotonic()
            wait_for(lambda: db.stats().pool_checked_out == 0, timeout=30, what="finalisers")
            settle = time.monotonic() - settle
    finally:
        gc.enable()
        logging.getLogger("uow").removeHandler(logged)
    elapsed = time.monotonic() - started
    gc.collect()

    total = sum(done.values())
    assert total == UNITS, f"{total} of {UNITS} units ran (seed {seed})"
    assert set(done) == set(endings), f"endings never drawn: {set(endings) - set(done)}"
    rows = {name for (name,) in fault.query("SELECT name FROM uow_test_items")}
    missing, extra = expected - rows, rows - expected
    assert not missing and not extra, (
        f"seed {seed}: {len(missing)} committed rows missing (e.g. {sorted(missing)[:5]}), "
        f"{len(extra)} rows from failed units (e.g. {sorted(extra)[:5]})"
    )
    assert sampler.peak_connections <= 4
    end = fault.assert_clean()
    print(
        f"\n[leaks, {driver}] {total} units in {WORKERS} workers in {elapsed:.1f}s "
        f"(seed {seed}): "
        + ", ".join(f"{name} {done[name]}" for name in endings)
        + f"; committed {len(rows)} rows = the {len(expected)} clean exits; finalisers done "
        f"{settle * 1000:.0f} ms after the last unit; {sampler}; "
        f"uow log warnings {dict(logged.messages) or 0}; {end}"
    )


def _abandon_in_a_cycle(db: Database, name: str) -> None:
    """Leave a generator suspended inside its unit of work, reachable only through a cycle."""
    box: list[object] = []
    rows = _yielding(Driver(asynchronous=False), db, 0, box)
    next(rows)
    box.append(rows)
    del rows, box


def test_unit_after_an_abandoned_generator_commits_its_work(fault: FaultWatch) -> None:
    """A unit entered after a generator was abandoned inside its own unit commits its own row."""
    db = fault.database(pool_size=2)
    gc.disable()  # the abandoned generator waits for the collector, as between two collections
    try:
        _abandon_in_a_cycle(db, "abandoned")
        with ShopUnitOfWork(db) as unit:
            unit.items.add(Item(name="later"))
        gc.collect()
    finally:
        gc.enable()
    rows = {name for (name,) in fault.query("SELECT name FROM uow_test_items")}
    print(f"\n[leaks] clean unit after an abandoned generator: committed rows {sorted(rows)}")
    assert rows == {"later"}


def test_thread_works_after_its_generator_is_collected_elsewhere(fault: FaultWatch) -> None:
    """After another thread's gc finalises a generator abandoned in a unit, its thread works on."""
    db = fault.database(pool_size=2)
    gc.disable()
    try:
        _abandon_in_a_cycle(db, "abandoned")
        collector = threading.Thread(target=gc.collect)
        collector.start()
        collector.join(10)
    finally:
        gc.enable()
    outcome = "ok"
    try:
        with ShopUnitOfWork(db) as unit:
            unit.items.add(Item(name="later"))
    except Exception as exc:
        outcome = kind(exc)
    print(f"\n[leaks] unit after its generator was collected by another thread: {outcome}")
    assert outcome == "ok"
