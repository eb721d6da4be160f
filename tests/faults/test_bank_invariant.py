"""Scenario 8: the bank invariant while backends are terminated and the server restarts.

Concurrent transfers (clients retrying with the same idempotency key, as real clients
do) and concurrent full reads run while faults 3 and 4 fire. Every read must see the
same total, no balance may go negative, and every transfer a client saw committed
must be in the ledger exactly once.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select

from examples.bank import async_services, services
from examples.bank.async_services import AsyncBankUnitOfWork
from examples.bank.models import Account
from examples.bank.unit_of_work import BankUnitOfWork
from tests.faults.driver import Driver
from tests.faults.helpers import FaultWatch, check_bank_invariant
from tests.models import Base
from uow import (
    CommitOutcomeUnknown,
    Database,
    DatabaseUnavailable,
    PoolExhausted,
    Settings,
    TransientError,
    migrations,
)
from uow.testing import EmbeddedPostgres

ACCOUNTS = 20
OPENING = 10_000
RETRYABLE = (TransientError, CommitOutcomeUnknown, DatabaseUnavailable, PoolExhausted)


@pytest.fixture(scope="module")
def server() -> Iterator[EmbeddedPostgres]:
    """This module's cluster also carries the bank schema, from the migrations."""
    postgres = EmbeddedPostgres(max_connections=40).start()
    try:
        migrations.upgrade(postgres.url, "head")
        with Database(Settings(url=postgres.url, application_name="uow-fault-setup")) as db:
            Base.metadata.create_all(db.engine)
        yield postgres
    finally:
        postgres.cleanup()


def transfer(
    driver: Driver, db: Database, source: int, target: int, amount: int, *, key: str
) -> None:
    """The example bank's transfer service: services.py, or async_services.py."""
    driver.call(
        lambda: services.transfer(BankUnitOfWork(db), source, target, amount, key=key),
        lambda: async_services.transfer(AsyncBankUnitOfWork(db), source, target, amount, key=key),
    )


def test_bank_invariant_holds_through_terminations_and_a_restart(
    fault: FaultWatch, driver: Driver
) -> None:
    """Transfers and reads under faults 3 and 4: totals exact, nothing negative, no duplicates."""
    fault.side.execute("TRUNCATE accounts, ledger RESTART IDENTITY CASCADE")
    database = fault.database(pool_size=6, pool_timeout=5)
    for _ in range(ACCOUNTS):
        services.open_account(BankUnitOfWork(database), "storm", OPENING)
    database.dispose()  # the async driver's pool holds every session the budget allows
    total = ACCOUNTS * OPENING
    committed: list[str] = []
    outcomes: Counter[str] = Counter()
    reads: list[int] = []
    negative_seen = 0
    lock = threading.Lock()
    stop = threading.Event()

    def transfers(i: int) -> None:
        rng = random.Random(i)
        while not stop.is_set():
            source, target = rng.sample(range(1, ACCOUNTS + 1), 2)
            key = uuid.uuid4().hex
            for _attempt in range(60):  # the client retries with the same key, for ~6 s
                try:
                    transfer(driver, database, source, target, rng.randint(1, 500), key=key)
                    outcome = "committed"
                except services.InsufficientFunds:
                    outcome = "declined"
                except RETRYABLE as exc:
                    with lock:
                        outcomes[f"retried after {type(exc).__name__}"] += 1
                    driver.sleep(0.1)
                    continue
                with lock:
                    outcomes[outcome] += 1
                    if outcome == "committed":
                        committed.append(key)
                break
            else:
                with lock:
                    outcomes["gave up"] += 1

    def reader(i: int) -> None:
        nonlocal negative_seen
        while not stop.is_set():
            try:
                with driver.unit(database, readonly=True, isolation="REPEATABLE READ") as u:
                    row = u.execute(
                        select(func.sum(Account.balance), func.min(Account.balance))
                    ).one()
            except RETRYABLE:
                driver.sleep(0.05)
                continue
            with lock:
                reads.append(int(row[0]))
                negative_seen += int(row[1]) < 0
            driver.sleep(0.005)

    def run(i: int) -> None:
        (reader if i < 2 else transfers)(i)

    started = time.monotonic()
    with fault.sampling(interval=0.02) as sampler:
        clients = driver.start(10, run, timeout=120)  # 2 readers, 8 transfer clients
        try:
            time.sleep(1.0)  # transfers and reads under way
            outcomes["backends terminated"] += len(fault.terminate_sessions())
            time.sleep(1.0)
            fault.server.restart(down_for=1.0)
            time.sleep(2.5)
        finally:
            stop.set()  # even if a fault could not be injected, the clients must stop
        clients.join()
    elapsed = time.monotonic() - started
    audit = check_bank_invariant(database, total=total, committed=committed)
    print(
        f"\nscenario 8, {driver}: {elapsed:.1f}s, {len(committed)} transfers committed, "
        f"{len(reads)} full reads, outcomes {dict(outcomes)}, audit ok={audit.ok}; "
        f"{fault.assert_clean()}"
    )
    assert committed and reads
    assert set(reads) == {total}  # every snapshot read sums to the total
    assert negative_seen == 0
    assert outcomes["gave up"] == 0
    assert outcomes["backends terminated"] >= 1
    assert sampler.peak_connections <= 6
