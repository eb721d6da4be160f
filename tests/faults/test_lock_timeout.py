"""Lock timeout: a unit waiting on a row lock fails after lock_timeout and leaves a clean pool."""

from __future__ import annotations

import asyncio
import threading
import time

import psycopg

from tests.faults.driver import Driver
from tests.faults.helpers import FaultWatch, causes, kind
from tests.models import Item, ShopUnitOfWork

LOCK_TIMEOUT = 0.5


def test_lock_wait_fails_after_lock_timeout_and_connection_returns_clean(
    fault: FaultWatch, driver: Driver
) -> None:
    """A get_for_update blocked by another unit fails with LockNotAvailable after ~0.5 s."""
    db = fault.database(pool_size=2, max_overflow=0, lock_timeout=LOCK_TIMEOUT)
    with ShopUnitOfWork(db) as setup:
        contended = setup.items.add(Item(name="contended", qty=0))
        setup.flush()
        item_id = contended.id
    db.dispose()  # the scenario's pool is the driver's
    locked, release = threading.Event(), threading.Event()
    waiter_pid, waited, qty = 0, 0.0, 0
    error: Exception | None = None

    def holder(i: int) -> None:
        try:
            with driver.unit(db) as unit:
                item = unit.get_for_update(Item, item_id)
                assert item is not None
                locked.set()
                driver.call(lambda: release.wait(30), lambda: asyncio.to_thread(release.wait, 30))
                item.qty += 1
        finally:
            locked.set()

    def waiter(i: int) -> None:
        nonlocal waiter_pid, waited, error
        began = time.monotonic()
        try:
            with driver.unit(db) as unit:
                waiter_pid = unit.backend_pid()
                unit.get_for_update(Item, item_id)
        except Exception as exc:
            error = exc
        waited = time.monotonic() - began

    def next_unit(i: int) -> None:
        nonlocal qty
        with driver.unit(db) as unit:  # the next unit on the same pool
            item = unit.get_for_update(Item, item_id)
            assert item is not None
            item.qty += 10
            qty = item.qty

    holding = driver.start(1, holder, timeout=60)
    assert locked.wait(30)
    driver.run(1, waiter, timeout=30)
    release.set()
    holding.join()

    assert error is not None, "get_for_update got a row locked by another transaction"
    chain = causes(error)
    # Right after the failure: the connection is back in the pool, its session idle.
    checked_out = db.stats().pool_checked_out
    state = dict(fault.sessions()).get(waiter_pid)
    driver.run(1, next_unit, timeout=30)
    end = fault.assert_clean()
    print(
        f"\n[lock timeout, {driver}] lock_timeout={LOCK_TIMEOUT}s: blocked get_for_update "
        f"raised {kind(error)} after {waited:.2f}s (causes {[type(e).__name__ for e in chain]}); "
        f"then checked_out={checked_out}, its backend {state!r}; next unit ok, qty={qty}; {end}"
    )
    assert any(isinstance(e, psycopg.errors.LockNotAvailable) for e in chain), chain
    assert LOCK_TIMEOUT <= waited <= LOCK_TIMEOUT + 2.0  # generous: the machine may be loaded
    assert checked_out == 0
    assert state == "idle", f"the failed unit's backend is {state!r}"
    assert qty == 11  # the holder's +1 committed, then the next unit's +10
