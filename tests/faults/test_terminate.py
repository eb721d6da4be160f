"""Terminated backends: pg_terminate_backend on every pooled connection, idle or busy."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter

import psycopg
import pytest

from tests.faults.driver import Driver
from tests.faults.helpers import FaultWatch, causes, kind
from tests.helpers import wait_for
from uow import (
    CommitOutcomeUnknown,
    ConnectionLost,
    Database,
    TransientError,
)

POOL_SIZE = 4


def fill_pool(driver: Driver, db: Database) -> set[int]:
    """Open every pooled connection at once (units meet at a barrier); return backend pids."""
    meet = driver.barrier(POOL_SIZE)
    pids: set[int] = set()

    def hold(i: int) -> None:
        with driver.unit(db) as unit:
            pids.add(unit.backend_pid())
            meet()

    driver.run(POOL_SIZE, hold, timeout=30)
    assert len(pids) == POOL_SIZE
    assert db.stats().pool_available == POOL_SIZE
    return pids


def kill_all(fault: FaultWatch) -> list[int]:
    """Terminate the application's backends and wait for them to exit."""
    killed = fault.terminate_sessions()
    wait_for(lambda: fault.count_sessions() == 0, timeout=10, what="terminated backends to exit")
    return killed


def test_idle_connections_terminated_are_replaced_without_errors(
    fault: FaultWatch, driver: Driver
) -> None:
    """All idle pooled connections terminated: the next units in 4 workers see no error."""
    db = fault.database(pool_size=POOL_SIZE, max_overflow=0, pool_timeout=10)
    before = fill_pool(driver, db)
    killed = kill_all(fault)
    terminated_at = time.monotonic()
    outcomes: Counter[str] = Counter()
    after: set[int] = set()
    first_ok: list[float] = []

    def work(i: int) -> None:
        for _ in range(10):
            try:
                with driver.unit(db) as unit:
                    after.add(unit.backend_pid())
                first_ok.append(time.monotonic() - terminated_at)
                outcomes["ok"] += 1
            except Exception as exc:
                outcomes[kind(exc)] += 1

    driver.run(POOL_SIZE, work, timeout=60)
    end = fault.assert_clean()
    print(
        f"\n[terminate idle, {driver}] killed {len(killed)} idle backends; {POOL_SIZE}x10 units: "
        f"{dict(outcomes)}; first success {min(first_ok, default=-1) * 1000:.0f} ms after; "
        f"{len(after)} new backends, {len(after & before)} old ones reused; {end}"
    )
    assert set(killed) == before
    assert outcomes == {"ok": POOL_SIZE * 10}
    assert not after & before


def test_busy_connections_terminated_fail_only_their_units(
    fault: FaultWatch, driver: Driver
) -> None:
    """Backends terminated mid-query: only those units fail (ConnectionLost); the rest succeed."""
    db = fault.database(pool_size=POOL_SIZE, max_overflow=0, pool_timeout=10)
    before = fill_pool(driver, db)
    failures: list[tuple[BaseException, float]] = []
    late: Counter[str] = Counter()
    terminated_at = 0.0

    def sleeper(i: int) -> None:
        try:
            with driver.unit(db) as unit:
                unit.execute("SELECT pg_sleep(2)")
        except Exception as exc:
            failures.append((exc, time.monotonic() - terminated_at))

    def latecomer(i: int) -> None:
        try:
            with driver.unit(db) as unit:  # queued behind the sleepers for a connection
                unit.execute("SELECT 1")
            late["ok"] += 1
        except Exception as exc:
            late[kind(exc)] += 1

    def busy() -> bool:
        rows = fault.side.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
            " AND state = 'active' AND query LIKE '%%pg_sleep%%'",
            (fault.app_name,),
        ).fetchone()
        return rows is not None and rows[0] == POOL_SIZE

    sleepers = driver.start(POOL_SIZE, sleeper, timeout=30)
    wait_for(busy, timeout=10, what="every pooled connection to run pg_sleep")
    latecomers = driver.start(POOL_SIZE, latecomer, timeout=30)
    wait_for(
        lambda: db.stats().requests_waiting == POOL_SIZE, timeout=10, what="latecomers to queue"
    )
    terminated_at = time.monotonic()
    killed = fault.terminate_sessions(state="active")
    sleepers.join()
    latecomers.join()

    refill = fill_pool(driver, db)  # a round of concurrent units: the pool is full again
    end = fault.assert_clean()
    kinds = Counter(kind(exc) for exc, _ in failures)
    print(
        f"\n[terminate busy, {driver}] killed {len(killed)} backends running pg_sleep(2): "
        f"sleepers failed {dict(kinds)} within "
        f"{max((t for _, t in failures), default=-1) * 1000:.0f} ms; {POOL_SIZE} queued "
        f"latecomers {dict(late)}; refill round: {len(refill)} new backends; {end}"
    )
    assert set(killed) == before
    assert len(failures) == POOL_SIZE, f"only {len(failures)} of the killed units failed"
    for exc, after in failures:
        assert after < 1.5, f"a unit failed {after:.2f}s after its backend was killed"
        assert isinstance(exc, ConnectionLost), repr(exc)
        assert any(isinstance(e, psycopg.OperationalError) for e in causes(exc)), repr(exc)
    assert late == {"ok": POOL_SIZE}
    assert not refill & before


def test_replacement_connections_are_reused(fault: FaultWatch, driver: Driver) -> None:
    """After the pool replaced terminated connections, later units reuse the replacements."""
    db = fault.database(pool_size=POOL_SIZE, max_overflow=0, pool_timeout=10)
    fill_pool(driver, db)
    kill_all(fault)
    backends: set[int] = set()
    started = time.monotonic()

    def work(i: int) -> None:
        for _ in range(25):
            with driver.unit(db) as unit:
                backends.add(unit.backend_pid())

    driver.run(POOL_SIZE, work, timeout=60)
    print(
        f"\n[terminate reuse, {driver}] {POOL_SIZE}x25 units in "
        f"{time.monotonic() - started:.2f}s after the kill opened {len(backends)} backends "
        f"for a pool of {POOL_SIZE}"
    )
    assert len(backends) <= 2 * POOL_SIZE


@pytest.mark.parametrize("readonly", [True, False], ids=["readonly", "readwrite"])
@pytest.mark.parametrize("then_query", [False, True], ids=["then-exit", "then-query"])
def test_terminated_unit_is_not_reported_as_a_leak(
    fault: FaultWatch,
    driver: Driver,
    caplog: pytest.LogCaptureFixture,
    readonly: bool,
    then_query: bool,
) -> None:
    """A unit whose backend was terminated is neither a long transaction nor a leak later."""
    caplog.set_level(logging.INFO, logger="uow")
    # Thresholds well above the unit's own life (a kill and its wait, some 50 ms) on a
    # loaded machine, and well below the wait below.
    db = fault.database(long_transaction_threshold=1.0, leak_detection_threshold=1.2)
    failed: list[BaseException] = []

    def kill_and_wait() -> None:
        assert len(kill_all(fault)) == 1

    def unit_killed(i: int) -> None:
        try:
            with driver.unit(db, readonly=readonly) as unit:
                unit.execute("SELECT 1")
                driver.call(kill_and_wait, lambda: asyncio.to_thread(kill_and_wait))
                if then_query:
                    unit.execute("SELECT 1")
        except (TransientError, CommitOutcomeUnknown) as exc:
            failed.append(exc)

    driver.run(1, unit_killed, timeout=60)
    # Readonly units that only exit have nothing to lose; the others fail transiently
    # (ConnectionLost) or with CommitOutcomeUnknown (COMMIT was the first to find out).
    for exc in failed:
        assert then_query or not readonly, repr(exc)
        assert isinstance(exc, ConnectionLost) or not then_query, repr(exc)
    time.sleep(2.0)  # well past both thresholds, and the monitor's scans
    reports = [
        r.getMessage()
        for r in caplog.records
        if "long transaction" in r.getMessage() or "leak" in r.getMessage()
    ]
    assert reports == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert (db.counters()["leaks"], db.counters()["long_transactions"]) == (0, 0)
    assert db.stats().pool_checked_out == 0
