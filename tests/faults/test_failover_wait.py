"""run_transaction(wait=...) waits out a server that goes away, with the sync and async units.

The module's throwaway server is stopped (``pg_ctl stop -m fast``: every session ends, new
connections are refused) and started again on the same port while writers call
``run_transaction`` / ``run_transaction_async``; the ``fault`` fixture starts it again
for the next test and checks that nothing is left checked out or idle in transaction.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.util import greenlet_spawn

from tests.faults.driver import Driver, Unit
from tests.faults.helpers import FaultWatch
from tests.models import Item
from uow import (
    AsyncUnitOfWork,
    CommitOutcomeUnknown,
    Database,
    DatabaseUnavailable,
    PoolExhausted,
    UnitOfWork,
    run_transaction,
    run_transaction_async,
)

WRITERS = 4
DOWN_FOR = 2.0


def retried(driver: Driver, database: Database, body: Callable[[Unit], Any], **options: Any) -> Any:
    """``run_transaction(body)``, or ``run_transaction_async`` of the same body, in a worker."""

    def sync_fn(unit: UnitOfWork) -> Any:
        return body(Unit(unit))

    async def async_fn(unit: AsyncUnitOfWork) -> Any:
        return await greenlet_spawn(body, Unit(unit))

    return driver.call(
        lambda: run_transaction(sync_fn, database=database, **options),
        lambda: run_transaction_async(async_fn, database=database, **options),
    )


@contextmanager
def server_down(fault: FaultWatch) -> Iterator[None]:
    """The server stopped for the block, and running again after it (for the end check)."""
    fault.server.stop("fast")
    try:
        yield
    finally:
        fault.server.start()


def in_worker(driver: Driver, check: Callable[[], None]) -> None:
    """Run ``check`` in one worker: a thread, or a task on the driver's event loop."""
    driver.run(1, lambda i: check(), timeout=60)


def test_writes_wait_out_a_restart_and_land_once(fault: FaultWatch, driver: Driver) -> None:
    """Server down 2 s under 4 writers with wait=20: every call returns, each row once."""
    database = fault.database(pool_size=2, pool_timeout=5, connect_timeout=2)
    acknowledged: list[str] = []
    unknown: list[str] = []  # COMMIT in flight when the server went: allowed, not retried
    longest: list[float] = []
    finished: list[float] = []
    stop = threading.Event()
    lock = threading.Lock()

    def writer(w: int) -> None:
        k, slowest = 0, 0.0
        while not stop.is_set():
            name, k = f"w{w}-{k}", k + 1

            def insert(unit: Unit, name: str = name) -> str:
                unit.add(Item(name=name))
                return name

            began = time.monotonic()
            try:
                got = retried(driver, database, insert, wait=20)
            except CommitOutcomeUnknown:
                with lock:
                    unknown.append(name)
                continue
            ended = time.monotonic()
            slowest = max(slowest, ended - began)
            assert got == name
            with lock:
                acknowledged.append(name)
                finished.append(ended)
            driver.sleep(0.01)
        with lock:
            longest.append(slowest)

    workers = driver.start(WRITERS, writer, timeout=60)
    time.sleep(0.5)
    went = time.monotonic()
    fault.server.stop("fast")
    time.sleep(DOWN_FOR)
    fault.server.start()
    back = time.monotonic()  # pg_ctl start -w saw it accept connections
    time.sleep(1.5)
    stop.set()
    workers.join()

    rows = [name for (name,) in fault.query("SELECT name FROM uow_test_items")]
    assert len(rows) == len(set(rows))  # the name is unique anyway: a duplicate would raise
    landed = set(rows) - set(unknown)
    assert landed == set(acknowledged), "an acknowledged write is missing, or an extra one landed"
    assert len(unknown) <= WRITERS  # at most the one COMMIT in flight per writer
    first_after = min((t for t in finished if t > back), default=None)
    assert first_after is not None, "no write succeeded after the server came back"
    assert first_after - back < 3.0  # target: within about 1 s; generous on a loaded machine
    assert max(longest) >= DOWN_FOR - 0.5, "no call waited through the outage"
    assert database.status().checked_out == 0
    print(
        f"\n{driver}: {len(acknowledged)} writes, {len(unknown)} outcome unknown; server down "
        f"{back - went:.1f}s; first write {first_after - back:.2f}s after it was back; "
        f"longest call {max(longest):.2f}s; retries counted {database.counters()['retries']}"
    )


def test_the_wait_runs_out_with_the_last_error_and_a_note(
    fault: FaultWatch, driver: Driver
) -> None:
    """Server down throughout, wait=1.5: DatabaseUnavailable after about 1.5 s, with a note."""
    database = fault.database(connect_timeout=2)
    calls = 0

    def select(unit: Unit) -> None:
        nonlocal calls
        calls += 1
        unit.execute("SELECT 1")

    def check() -> None:
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailable) as info:
            retried(driver, database, select, wait=1.5, retries=0)
        elapsed.append(time.monotonic() - started)
        errors.append(info.value)

    elapsed: list[float] = []
    errors: list[DatabaseUnavailable] = []
    with server_down(fault):
        in_worker(driver, check)
    assert 1.4 <= elapsed[0] < 6.0
    assert type(errors[0]) is DatabaseUnavailable  # the last error itself, not a wrapper
    (note,) = errors[0].__notes__
    assert note.startswith("uow waited 1.") and "wait=1.5" in note
    assert "UOW_FAILOVER_WAIT" in note
    assert calls >= 2  # a connection is taken at the first statement, inside fn
    print(f"\n{driver}: gave up after {elapsed[0]:.2f}s and {calls} attempts: {note}")


def test_wait_zero_raises_at_once(fault: FaultWatch, driver: Driver) -> None:
    """wait=0 keeps the behaviour without waiting: an outage's error is raised at once."""
    database = fault.database(connect_timeout=2)

    def check() -> None:
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailable) as info:
            retried(driver, database, lambda unit: unit.execute("SELECT 1"), wait=0)
        assert time.monotonic() - started < 2.0
        assert not getattr(info.value, "__notes__", [])

    with server_down(fault):
        in_worker(driver, check)
    assert database.counters()["retries"] == 0


def test_the_default_wait_is_the_databases_failover_wait(fault: FaultWatch, driver: Driver) -> None:
    """Without wait=, the database's failover_wait setting is how long a call waits."""
    database = fault.database(connect_timeout=2, failover_wait=1)

    def check() -> None:
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailable) as info:
            retried(driver, database, lambda unit: unit.execute("SELECT 1"))
        assert 0.9 <= time.monotonic() - started < 6.0
        assert "wait=1)" in info.value.__notes__[0]

    with server_down(fault):
        in_worker(driver, check)


def test_a_full_pool_is_not_waited_for(fault: FaultWatch) -> None:
    """PoolExhausted is raised after pool_timeout even with a wait: retrying adds load."""
    database = fault.database(pool_size=1, max_overflow=0, pool_timeout=0.5)
    calls = 0

    def select(unit: UnitOfWork) -> None:
        nonlocal calls
        calls += 1
        unit.session.execute(text("SELECT 1"))

    with database.engine.connect() as held:
        held.execute(text("SELECT 1"))
        started = time.monotonic()
        with pytest.raises(PoolExhausted):
            run_transaction(select, database=database, wait=20)
        assert time.monotonic() - started < 3.0
    assert calls == 1
    assert database.counters()["retries"] == 0
