"""The bank's services on a real PostgreSQL, migrated with alembic: locks, races, the audit."""

from __future__ import annotations

import dataclasses
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from examples.bank import services
from examples.bank.services import (
    AccountNotFound,
    IdempotencyConflict,
    InsufficientFunds,
    InvalidAmount,
)
from examples.bank.unit_of_work import BankUnitOfWork
from tests.conftest import MakeDatabase, libpq_dsn
from tests.helpers import wait_for
from uow import Database


def ledger_rows(bank_admin: psycopg.Connection[Any]) -> int:
    row = bank_admin.execute("SELECT count(*) FROM ledger").fetchone()
    assert row is not None
    return int(row[0])


def run_together(count: int, work: Callable[[int], None]) -> None:
    """Start ``count`` threads at once (behind a barrier) and wait for all of them."""
    barrier = threading.Barrier(count)

    def start(i: int) -> None:
        barrier.wait()
        work(i)

    threads = [threading.Thread(target=start, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_open_deposit_transfer_statement(bank_db: Database) -> None:
    """The basic flow commits: balances, the ledger lines and the audit agree."""
    ann = services.open_account(BankUnitOfWork(bank_db), "ann", 1_000)
    bob = services.open_account(BankUnitOfWork(bank_db), "bob")

    assert services.deposit(BankUnitOfWork(bank_db), bob, 250, key="d-1") == 250
    result = services.transfer(BankUnitOfWork(bank_db), ann, bob, 400, key="t-1")

    assert (result.source_id, result.target_id, result.amount, result.replayed) == (
        ann,
        bob,
        400,
        False,
    )
    assert services.get_account(BankUnitOfWork(bank_db, readonly=True), ann).balance == 600
    # As the API reads it: one readonly snapshot, which ends with a rollback.
    page = services.statement(
        BankUnitOfWork(bank_db, readonly=True, isolation="REPEATABLE READ"), bob
    )
    assert page.balance == 650
    assert [(line.kind, line.amount, line.counterparty_id) for line in page.lines] == [
        ("deposit", 250, None),
        ("transfer in", 400, ann),
    ]
    assert all(line.created_at is not None for line in page.lines)
    assert services.total_balance(BankUnitOfWork(bank_db)) == 1_250
    audit = services.audit(BankUnitOfWork(bank_db, readonly=True))
    assert audit.ok
    assert (audit.accounts, audit.total_balance, audit.total_deposits) == (2, 1_250, 1_250)


def test_insufficient_funds_changes_nothing(
    bank_db: Database, bank_admin: psycopg.Connection[Any]
) -> None:
    """A transfer above the balance raises InsufficientFunds and writes no balance or ledger row."""
    ann = services.open_account(BankUnitOfWork(bank_db), "ann", 100)
    bob = services.open_account(BankUnitOfWork(bank_db), "bob", 5)
    before = ledger_rows(bank_admin)

    with pytest.raises(InsufficientFunds):
        services.transfer(BankUnitOfWork(bank_db), ann, bob, 101, key="too-much")

    assert services.get_account(BankUnitOfWork(bank_db), ann).balance == 100
    assert services.get_account(BankUnitOfWork(bank_db), bob).balance == 5
    assert ledger_rows(bank_admin) == before


def test_invalid_amounts_and_unknown_accounts(bank_db: Database) -> None:
    """Zero, negative and same-account transfers are InvalidAmount; a missing id AccountNotFound."""
    ann = services.open_account(BankUnitOfWork(bank_db), "ann", 100)
    for amount in (0, -5):
        with pytest.raises(InvalidAmount):
            services.deposit(BankUnitOfWork(bank_db), ann, amount, key=f"bad-{amount}")
    with pytest.raises(InvalidAmount):
        services.transfer(BankUnitOfWork(bank_db), ann, ann, 10, key="self")
    with pytest.raises(AccountNotFound):
        services.transfer(BankUnitOfWork(bank_db), ann, 999_999, 10, key="nobody")
    with pytest.raises(AccountNotFound):
        services.statement(BankUnitOfWork(bank_db), 999_999)
    assert services.audit(BankUnitOfWork(bank_db)).ok


def test_replay_returns_the_original_result(
    bank_db: Database, bank_admin: psycopg.Connection[Any]
) -> None:
    """A repeated key returns the first result (even after later movements) and applies once."""
    ann = services.open_account(BankUnitOfWork(bank_db), "ann", 1_000)
    bob = services.open_account(BankUnitOfWork(bank_db), "bob")
    first_deposit = services.deposit(BankUnitOfWork(bank_db), ann, 100, key="dep")
    first = services.transfer(BankUnitOfWork(bank_db), ann, bob, 300, key="tr")
    services.deposit(BankUnitOfWork(bank_db), ann, 7, key="later")
    rows = ledger_rows(bank_admin)

    assert services.deposit(BankUnitOfWork(bank_db), ann, 100, key="dep") == first_deposit
    again = services.transfer(BankUnitOfWork(bank_db), ann, bob, 300, key="tr")

    assert again.replayed
    assert dataclasses.replace(again, replayed=False) == first
    assert ledger_rows(bank_admin) == rows
    assert services.get_account(BankUnitOfWork(bank_db), ann).balance == 1_000 + 100 - 300 + 7
    with pytest.raises(IdempotencyConflict):
        services.transfer(BankUnitOfWork(bank_db), ann, bob, 301, key="tr")
    with pytest.raises(IdempotencyConflict):
        services.deposit(BankUnitOfWork(bank_db), bob, 100, key="dep")


def test_concurrent_transfers_both_ways_lose_nothing(
    bank_url: str, make_database: MakeDatabase
) -> None:
    """20 threads moving money both ways between two accounts: no deadlock, no lost update."""
    database = make_database(url=bank_url, pool_size=5, pool_timeout=30)
    ann = services.open_account(BankUnitOfWork(database), "ann", 500)
    bob = services.open_account(BankUnitOfWork(database), "bob", 500)
    outcomes: Counter[str] = Counter()
    moved: Counter[int] = Counter()  # net cents into ann, per thread
    lock = threading.Lock()

    def work(i: int) -> None:
        source, target = (ann, bob) if i % 2 else (bob, ann)
        for n in range(15):
            amount = 1 + (i * 7 + n * 13) % 90
            try:
                services.transfer(
                    BankUnitOfWork(database), source, target, amount, key=f"t-{i}-{n}"
                )
            except InsufficientFunds:
                outcome = "insufficient"
            except Exception as exc:
                outcome = type(exc).__name__
            else:
                outcome = "done"
                with lock:
                    moved[i] += amount if target == ann else -amount
            with lock:
                outcomes[outcome] += 1

    run_together(20, work)

    assert set(outcomes) <= {"done", "insufficient"}, outcomes
    assert outcomes["done"] > 100
    balances = {
        account: services.get_account(BankUnitOfWork(database), account).balance
        for account in (ann, bob)
    }
    assert balances[ann] == 500 + sum(moved.values())
    assert balances[ann] + balances[bob] == 1_000
    assert min(balances.values()) >= 0
    audit = services.audit(BankUnitOfWork(database))
    assert audit.ok, audit
    assert database.status().checked_out == 0


def test_concurrent_duplicates_apply_once(
    bank_db: Database, bank_admin: psycopg.Connection[Any]
) -> None:
    """The same key sent by 10 threads at once is applied once; all get the same result."""
    ann = services.open_account(BankUnitOfWork(bank_db), "ann", 1_000)
    bob = services.open_account(BankUnitOfWork(bank_db), "bob")
    results: list[services.Transfer | Exception] = []

    def work(_: int) -> None:
        try:
            result = services.transfer(BankUnitOfWork(bank_db), ann, bob, 250, key="once")
        except Exception as exc:
            results.append(exc)
        else:
            results.append(dataclasses.replace(result, replayed=False))

    run_together(10, work)

    assert len(results) == 10
    assert all(not isinstance(r, Exception) for r in results), results
    assert len(set(results)) == 1
    assert services.get_account(BankUnitOfWork(bank_db), bob).balance == 250
    row = bank_admin.execute("SELECT count(*) FROM ledger WHERE idempotency_key = 'once'")
    assert row.fetchone() == (1,)
    assert bank_db.status().checked_out == 0


def test_concurrent_reuse_of_a_key_on_other_accounts(
    bank_db: Database, bank_admin: psycopg.Connection[Any]
) -> None:
    """One key raced on different accounts: one deposit wins, the others get IdempotencyConflict.

    The accounts' row locks do not order these calls, so the losers hit the unique
    constraint at commit and are replayed in a fresh transaction.
    """
    accounts = [services.open_account(BankUnitOfWork(bank_db), f"owner {i}") for i in range(8)]
    outcomes: list[str] = []

    def work(i: int) -> None:
        try:
            services.deposit(BankUnitOfWork(bank_db), accounts[i], 10, key="shared")
        except IdempotencyConflict:
            outcomes.append("conflict")
        except Exception as exc:
            outcomes.append(repr(exc))
        else:
            outcomes.append("done")

    run_together(len(accounts), work)

    assert sorted(outcomes) == ["conflict"] * 7 + ["done"]
    assert services.total_balance(BankUnitOfWork(bank_db)) == 10
    assert services.audit(BankUnitOfWork(bank_db)).ok
    assert bank_db.status().checked_out == 0


def test_audit_finds_a_balance_the_ledger_does_not_explain(
    bank_db: Database, bank_admin: psycopg.Connection[Any]
) -> None:
    """A balance changed behind the ledger's back fails the audit, naming the account."""
    ann = services.open_account(BankUnitOfWork(bank_db), "ann", 100)
    services.open_account(BankUnitOfWork(bank_db), "bob", 100)
    bank_admin.execute("UPDATE accounts SET balance = balance + 1 WHERE id = %s", (ann,))

    audit = services.audit(BankUnitOfWork(bank_db))

    assert not audit.ok
    assert (audit.mismatched, audit.negative, audit.examples) == (1, 0, (ann,))
    assert audit.total_balance == audit.total_deposits + 1


def test_key_committed_by_a_racing_transaction_is_a_conflict_not_an_integrity_error(
    bank_db: Database, bank_url: str, bank_admin: psycopg.Connection[Any], app_name: str
) -> None:
    """A deposit stopped by the key's unique constraint is retried and reports the conflict.

    Another transaction records the key first and commits only once the deposit is
    blocked on it, so the deposit's own check cannot have seen it.
    """
    ann = services.open_account(BankUnitOfWork(bank_db), "ann")
    bob = services.open_account(BankUnitOfWork(bank_db), "bob")
    outcome: list[BaseException | int] = []

    with psycopg.connect(libpq_dsn(bank_url)) as racer:
        racer.execute(
            "INSERT INTO ledger (idempotency_key, target_id, amount) VALUES ('raced', %s, 5)",
            (bob,),
        )
        racer.execute("UPDATE accounts SET balance = balance + 5 WHERE id = %s", (bob,))

        def work() -> None:
            try:
                outcome.append(services.deposit(BankUnitOfWork(bank_db), ann, 5, key="raced"))
            except BaseException as exc:
                outcome.append(exc)

        thread = threading.Thread(target=work)
        thread.start()
        wait_for(
            lambda: blocked_on_a_lock(bank_admin, app_name),
            what="the deposit to wait",
        )
        racer.commit()
        thread.join()

    assert len(outcome) == 1
    assert isinstance(outcome[0], IdempotencyConflict), outcome
    assert services.get_account(BankUnitOfWork(bank_db), ann).balance == 0
    assert services.audit(BankUnitOfWork(bank_db)).ok


def blocked_on_a_lock(admin: psycopg.Connection[Any], app_name: str) -> bool:
    row = admin.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
        "AND wait_event_type = 'Lock'",
        (app_name,),
    ).fetchone()
    return row is not None and row[0] > 0
