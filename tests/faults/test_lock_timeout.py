"""Lock timeout: a unit waiting on a row lock fails after lock_timeout and leaves a clean pool."""

from __future__ import annotations

import threading
import time

import psycopg
from sqlalchemy import text

from tests.faults.helpers import FaultWatch, causes, kind
from tests.models import Item, ShopUnitOfWork

LOCK_TIMEOUT = 0.5


def test_lock_wait_fails_after_lock_timeout_and_connection_returns_clean(
    fault: FaultWatch,
) -> None:
    """A get_for_update blocked by another unit fails with LockNotAvailable after ~0.5 s."""
    db = fault.database(pool_size=2, max_overflow=0, lock_timeout=LOCK_TIMEOUT)
    with ShopUnitOfWork(db) as unit:
        contended = unit.items.add(Item(name="contended", qty=0))
        unit.flush()
        item_id = contended.id
    locked, release = threading.Event(), threading.Event()
    holder_errors: list[BaseException] = []

    def holder() -> None:
        try:
            with ShopUnitOfWork(db) as unit:
                item = unit.items.get_for_update(item_id)
                assert item is not None
                locked.set()
                release.wait(10)
                item.qty += 1
        except BaseException as exc:
            holder_errors.append(exc)
            locked.set()

    thread = threading.Thread(target=holder, daemon=True)
    thread.start()
    assert locked.wait(10)
    waiter_pid = 0
    error: Exception | None = None
    began = time.monotonic()
    try:
        with ShopUnitOfWork(db) as unit:
            waiter_pid = unit.session.execute(text("SELECT pg_backend_pid()")).scalar_one()
            unit.items.get_for_update(item_id)
    except Exception as exc:
        error = exc
    waited = time.monotonic() - began
    release.set()
    thread.join(10)
    assert not thread.is_alive() and not holder_errors, holder_errors

    assert error is not None, "get_for_update got a row locked by another transaction"
    chain = causes(error)
    # Right after the failure: the connection is back in the pool, its session idle.
    checked_out = db.status().checked_out
    state = dict(fault.sessions()).get(waiter_pid)
    with ShopUnitOfWork(db) as unit:  # the next unit on the same pool
        item = unit.items.get_for_update(item_id)
        assert item is not None
        item.qty += 10
        qty = item.qty
    end = fault.assert_clean()
    print(
        f"\n[lock timeout] lock_timeout={LOCK_TIMEOUT}s: blocked get_for_update raised "
        f"{kind(error)} after {waited:.2f}s (causes {[type(e).__name__ for e in chain]}); "
        f"then checked_out={checked_out}, its backend {state!r}; next unit ok, qty={qty}; {end}"
    )
    assert any(isinstance(e, psycopg.errors.LockNotAvailable) for e in chain), chain
    assert LOCK_TIMEOUT <= waited <= LOCK_TIMEOUT + 0.5
    assert checked_out == 0
    assert state == "idle", f"the failed unit's backend is {state!r}"
    assert qty == 11  # the holder's +1 committed, then the next unit's +10
