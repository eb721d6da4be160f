"""Scenario 7: a serialization storm on one hot row, SERIALIZABLE with retries."""

from __future__ import annotations

import threading
import time
from collections import Counter

from sqlalchemy.util import greenlet_spawn

from tests.faults.driver import Driver, Unit
from tests.faults.helpers import FaultWatch
from tests.models import Item
from uow import (
    AsyncUnitOfWork,
    SerializationFailure,
    UnitOfWork,
    run_transaction_async,
    transactional,
)

RETRIES = {"retries": 8, "isolation": "SERIALIZABLE", "max_backoff": 0.2}


def increment(unit: Unit) -> None:
    """Read the hot row's count, then write it plus one: a read-modify-write that conflicts."""
    current = unit.execute("SELECT qty FROM uow_test_items WHERE name = 'hot'").scalar_one()
    unit.execute("UPDATE uow_test_items SET qty = :q WHERE name = 'hot'", {"q": current + 1})


def test_serialization_storm_commits_or_fails_typed_without_pool_deadlock(
    fault: FaultWatch, driver: Driver
) -> None:
    """16 workers increment one row under SERIALIZABLE: each call commits or ends typed."""
    database = fault.database(pool_size=4, pool_timeout=10)
    with UnitOfWork(database) as unit:
        unit.repository(Item).add(Item(name="hot", qty=0))
    database.dispose()  # the async driver's pool holds every session the budget allows

    @transactional(database=database, **RETRIES)
    def sync_increment(unit: UnitOfWork) -> None:
        increment(Unit(unit))

    async def async_increment(unit: AsyncUnitOfWork) -> None:
        await greenlet_spawn(increment, Unit(unit))

    def retried() -> None:
        driver.call(
            sync_increment,
            lambda: run_transaction_async(async_increment, database=database, **RETRIES),
        )

    outcomes: Counter[str] = Counter()
    lock = threading.Lock()
    started = time.monotonic()

    def client(i: int) -> None:
        for _ in range(25):
            try:
                retried()
                outcome = "committed"
            except SerializationFailure:
                outcome = "gave up (SerializationFailure)"
            with lock:
                outcomes[outcome] += 1

    with fault.sampling() as sampler:
        driver.run(16, client, timeout=240)
    elapsed = time.monotonic() - started
    with UnitOfWork(database) as unit:
        final = unit.repository(Item).list(name="hot")[0].qty
    retries = database.counters()["retries"]
    print(
        f"\nscenario 7, {driver}: 16 workers x 25 SERIALIZABLE increments of one row in "
        f"{elapsed:.1f}s: "
        f"{dict(outcomes)}, {retries} retries, final value {final}, "
        f"peak {sampler.peak_connections} connections of pool 4; {fault.assert_clean()}"
    )
    assert sum(outcomes.values()) == 400  # every call ended, none hung or failed otherwise
    assert final == outcomes["committed"]  # no lost update, no double increment
    assert retries > 0  # the storm really conflicted
    assert sampler.peak_connections <= 4
