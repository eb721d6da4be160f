"""Leak regression: thousands of units of work, ending every way a block can end, in threads."""

from __future__ import annotations

import contextlib
import gc
import logging
import random
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Generator

import psycopg
from sqlalchemy import text
from sqlalchemy.exc import DataError, IntegrityError

from tests.faults.helpers import FaultWatch, kind, run_threads
from tests.models import Item, ShopUnitOfWork
from uow import Database, TransactionRolledBack

UNITS = 3000
THREADS = 6
BUDGET = 40.0  # seconds the units may take in all; the test fails if they need more


class Boom(Exception):
    """The application's own error, raised inside a block."""


# Each ending runs one unit of work that writes row u<n>, and returns whether that row
# must be committed: only the units that leave their block without an exception.


def clean_exit(db: Database, n: int) -> bool:
    with ShopUnitOfWork(db) as unit:
        unit.items.add(Item(name=f"u{n}"))
    return True


def early_return(db: Database, n: int) -> bool:
    with ShopUnitOfWork(db) as unit:
        unit.items.add(Item(name=f"u{n}"))
        unit.flush()
        return True  # leaves the block half way: a clean exit, so it commits


def raised(db: Database, n: int) -> bool:
    with contextlib.suppress(Boom), ShopUnitOfWork(db) as unit:
        unit.items.add(Item(name=f"u{n}"))
        unit.flush()
        raise Boom
    return False


def database_error(db: Database, n: int) -> bool:
    with contextlib.suppress(DataError), ShopUnitOfWork(db) as unit:
        unit.items.add(Item(name=f"u{n}"))
        unit.flush()
        unit.session.execute(text("SELECT 1 / 0"))
    return False


def keyboard_interrupt(db: Database, n: int) -> bool:
    try:
        with ShopUnitOfWork(db) as unit:
            unit.items.add(Item(name=f"u{n}"))
            unit.flush()
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        return False


def _yielding(db: Database, n: int, box: list[object]) -> Generator[int, None, None]:
    with ShopUnitOfWork(db) as unit:
        unit.items.add(Item(name=f"u{n}"))
        unit.flush()
        yield n
        unit.items.add(Item(name=f"u{n}-never"))  # the consumer never comes back


def generator_closed(db: Database, n: int) -> bool:
    rows = _yielding(db, n, [])
    next(rows)
    rows.close()  # GeneratorExit inside the block
    return False


def generator_dropped(db: Database, n: int) -> bool:
    rows = _yielding(db, n, [])
    next(rows)
    del rows  # the last reference: CPython finalises the generator right here
    return False


# Automatic collection is off during the stress test and each collected generator is made
# garbage and collected under this lock: gc.collect() returns at once while another thread
# is collecting, and a generator left for a later collection would still hold its
# connection at the end check. Finalisation from another thread is pinned separately, by
# test_thread_works_after_its_generator_is_collected_elsewhere.
_COLLECTING = threading.Lock()


def generator_collected(db: Database, n: int) -> bool:
    with _COLLECTING:
        box: list[object] = []
        rows = _yielding(db, n, box)
        next(rows)
        box.append(rows)  # a reference cycle: only the cyclic garbage collector can finalise it
        alive = weakref.ref(rows)
        del rows, box
        gc.collect()
        assert alive() is None, "the collector did not finalise the abandoned generator"
    return False


def nested_failure(db: Database, n: int) -> bool:
    try:
        with ShopUnitOfWork(db) as outer:
            outer.items.add(Item(name=f"u{n}"))
            with contextlib.suppress(Boom), ShopUnitOfWork(db) as inner:
                inner.items.add(Item(name=f"u{n}-inner"))
                raise Boom
    except TransactionRolledBack:
        return False
    raise AssertionError("a unit of work committed although a unit that joined it failed")


def savepoint_failure(db: Database, n: int) -> bool:
    with ShopUnitOfWork(db) as unit:
        unit.items.add(Item(name=f"u{n}"))
        unit.flush()
        try:
            with unit.savepoint():
                unit.items.add(Item(name=f"u{n}"))  # the same unique name again
                unit.flush()
        except IntegrityError as exc:
            assert isinstance(exc.orig, psycopg.errors.UniqueViolation), repr(exc.orig)
        else:
            raise AssertionError("a duplicate name was accepted")
    return True  # the savepoint's row is undone, the unit's own row commits


ENDINGS: dict[str, tuple[Callable[[Database, int], bool], int]] = {
    "clean": (clean_exit, 20),
    "early_return": (early_return, 10),
    "raise": (raised, 12),
    "db_error": (database_error, 8),
    "keyboard_interrupt": (keyboard_interrupt, 10),
    "generator_close": (generator_closed, 8),
    "generator_drop": (generator_dropped, 8),
    "generator_gc": (generator_collected, 4),
    "nested_failure": (nested_failure, 10),
    "savepoint_failure": (savepoint_failure, 10),
}


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        cause = record.exc_info[1] if record.exc_info else None
        self.messages[f"{record.getMessage()} [{type(cause).__name__}]"] += 1


def test_no_leak_whatever_way_units_end(fault: FaultWatch) -> None:
    """3000 units ending every way a block can, in 6 threads: no leak, only clean exits commit."""
    db = fault.database(pool_size=4, max_overflow=0, pool_timeout=5)
    seed = random.randrange(2**32)
    names, weights = list(ENDINGS), [weight for _, weight in ENDINGS.values()]
    lock = threading.Lock()
    issued = 0
    done: Counter[str] = Counter()
    expected: set[str] = set()
    deadline = time.monotonic() + BUDGET
    logged = _Errors()
    logging.getLogger("uow").addHandler(logged)

    def worker(t: int) -> None:
        nonlocal issued
        rng = random.Random(seed + t)
        while time.monotonic() < deadline:
            with lock:
                n, issued = issued, issued + 1
            if n >= UNITS:
                return
            ending = rng.choices(names, weights)[0]
            committed = ENDINGS[ending][0](db, n)
            with lock:
                done[ending] += 1
                if committed:
                    expected.add(f"u{n}")

    started = time.monotonic()
    gc.disable()
    try:
        with fault.sampling(interval=0.02) as sampler:
            run_threads(THREADS, worker, timeout=BUDGET + 10)
    finally:
        gc.enable()
        logging.getLogger("uow").removeHandler(logged)
    elapsed = time.monotonic() - started
    gc.collect()

    total = sum(done.values())
    assert total == UNITS, f"only {total} of {UNITS} units ran within {BUDGET}s (seed {seed})"
    assert set(done) == set(ENDINGS), f"endings never drawn: {set(ENDINGS) - set(done)}"
    rows = {name for (name,) in fault.query("SELECT name FROM uow_test_items")}
    missing, extra = expected - rows, rows - expected
    assert not missing and not extra, (
        f"seed {seed}: {len(missing)} committed rows missing (e.g. {sorted(missing)[:5]}), "
        f"{len(extra)} rows from failed units (e.g. {sorted(extra)[:5]})"
    )
    assert sampler.peak_connections <= 4
    end = fault.assert_clean()
    print(
        f"\n[leaks] {total} units in {THREADS} threads in {elapsed:.1f}s (seed {seed}): "
        + ", ".join(f"{name} {done[name]}" for name in ENDINGS)
        + f"; committed {len(rows)} rows = the {len(expected)} clean exits; "
        f"{sampler}; uow log warnings {dict(logged.messages) or 0}; {end}"
    )


def _abandon_in_a_cycle(db: Database, name: str) -> None:
    """Leave a generator suspended inside its unit of work, reachable only through a cycle."""
    box: list[object] = []
    rows = _yielding(db, 0, box)
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
