"""Retrying whole units of work on transient errors, against a real PostgreSQL."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from typing import Any

import psycopg
import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import text

from tests.helpers import ctrl_c_raises
from tests.models import Item, ShopUnitOfWork
from uow import (
    CommitOutcomeUnknown,
    ConnectionLost,
    Database,
    DeadlockDetected,
    SerializationFailure,
    UnitOfWork,
    UsageError,
    run_transaction,
    transactional,
)


def seed(*names: str) -> None:
    with UnitOfWork() as unit:
        unit.repository(Item).add_all(Item(name=name, qty=0) for name in names)


def qty(admin: psycopg.Connection[Any], name: str) -> int:
    row = admin.execute("SELECT qty FROM uow_test_items WHERE name = %s", (name,)).fetchone()
    assert row is not None
    return int(row[0])


def test_serialization_failure_is_classified_and_retried(
    database: Database, admin: psycopg.Connection[Any]
) -> None:
    """Two SERIALIZABLE increments of one row conflict; with retries both land."""
    seed("hot")
    barrier = threading.Barrier(2)
    attempts: list[str] = []
    errors: list[BaseException] = []

    def increment(unit: UnitOfWork, who: str) -> None:
        attempts.append(who)
        item = unit.session.scalars(text("SELECT qty FROM uow_test_items WHERE name = 'hot'"))
        current = item.one()
        if attempts.count(who) == 1:
            barrier.wait(5)  # both have read before either writes: a conflict is certain
        unit.session.execute(
            text("UPDATE uow_test_items SET qty = :q WHERE name = 'hot'"), {"q": current + 1}
        )

    def run(who: str) -> None:
        try:
            run_transaction(lambda unit: increment(unit, who), isolation="SERIALIZABLE")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(who,)) for who in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert qty(admin, "hot") == 2
    assert len(attempts) == 3  # one of the two ran again
    assert database.counters()["retries"] == 1


def test_serialization_failure_without_retries_is_typed(database: Database) -> None:
    """Without the retry helper, a 40001 surfaces as uow.SerializationFailure."""
    seed("hot")
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def conflict() -> None:
        try:
            with UnitOfWork(isolation="SERIALIZABLE") as unit:
                unit.session.execute(text("SELECT qty FROM uow_test_items WHERE name = 'hot'"))
                barrier.wait(5)
                unit.session.execute(text("UPDATE uow_test_items SET qty = qty + 1"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=conflict) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(errors) == 1
    assert isinstance(errors[0], SerializationFailure)
    assert isinstance(errors[0].__cause__, psycopg.errors.SerializationFailure)
    assert database.status().checked_out == 0


def test_deadlock_is_classified_and_retried(
    database: Database, admin: psycopg.Connection[Any]
) -> None:
    """Two units locking two rows in opposite orders deadlock; the victim is retried."""
    seed("a", "b")
    barrier = threading.Barrier(2)
    seen: list[type[BaseException]] = []
    errors: list[BaseException] = []

    @transactional(retries=3)
    def move(unit: UnitOfWork, first: str, second: str) -> None:
        lock = text("SELECT 1 FROM uow_test_items WHERE name = :n FOR UPDATE")
        unit.session.execute(lock, {"n": first})
        if not seen:
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.wait(5)
        unit.session.execute(lock, {"n": second})
        unit.session.execute(
            text("UPDATE uow_test_items SET qty = qty + 1 WHERE name IN ('a', 'b')")
        )

    def run(first: str, second: str) -> None:
        try:
            move(first, second)
        except BaseException as exc:
            errors.append(exc)

    original = DeadlockDetected.__init__

    def spy(self: DeadlockDetected, *args: Any) -> None:
        seen.append(type(self))
        original(self, *args)

    DeadlockDetected.__init__ = spy  # type: ignore[method-assign]
    try:
        threads = [
            threading.Thread(target=run, args=("a", "b")),
            threading.Thread(target=run, args=("b", "a")),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        DeadlockDetected.__init__ = original  # type: ignore[method-assign]
    assert errors == []
    assert seen == [DeadlockDetected]
    assert (qty(admin, "a"), qty(admin, "b")) == (2, 2)


def test_other_errors_are_never_retried(database: Database) -> None:
    """A constraint violation or an application error is raised at once, never retried."""
    seed("apple")
    calls = 0

    def duplicate(unit: ShopUnitOfWork) -> None:
        nonlocal calls
        calls += 1
        unit.items.add(Item(name="apple"))
        unit.flush()

    with pytest.raises(sa_exc.IntegrityError):
        run_transaction(duplicate, unit_of_work=ShopUnitOfWork)
    assert calls == 1

    def broken(unit: UnitOfWork) -> None:
        nonlocal calls
        calls += 1
        raise ValueError

    with pytest.raises(ValueError):
        run_transaction(broken)
    assert calls == 2
    assert database.counters()["retries"] == 0


def test_retries_are_bounded_and_the_last_error_is_raised(database: Database) -> None:
    """After retries+1 attempts the last transient error propagates, typed."""
    calls = 0
    started = time.monotonic()

    def always_conflicts(unit: UnitOfWork) -> None:
        nonlocal calls
        calls += 1
        unit.session.execute(text("SELECT 1"))
        raise SerializationFailure("simulated conflict")

    with pytest.raises(SerializationFailure, match="simulated"):
        run_transaction(always_conflicts, retries=3, backoff=0.01, max_backoff=0.02)
    assert calls == 4
    assert time.monotonic() - started < 1  # full jitter under the 0.02 s cap
    assert database.status().checked_out == 0


def test_no_retry_inside_an_open_unit(database: Database) -> None:
    """Inside an open unit the transaction is already doomed: the error goes up at once."""
    calls = 0

    def conflicts(unit: UnitOfWork) -> None:
        nonlocal calls
        calls += 1
        raise SerializationFailure("simulated")

    with pytest.raises(SerializationFailure), UnitOfWork():
        run_transaction(conflicts, retries=5)
    assert calls == 1


def test_bad_retry_options_are_refused() -> None:
    """retries and backoff are validated."""
    with pytest.raises(UsageError, match="retries"):
        run_transaction(lambda unit: None, retries=-1)
    with pytest.raises(UsageError, match="backoff"):
        run_transaction(lambda unit: None, backoff=0)


def test_connection_lost_before_commit_is_retried(
    database: Database, admin: psycopg.Connection[Any]
) -> None:
    """A backend terminated mid-unit fails that attempt with ConnectionLost; the retry commits."""
    seed("apple")
    seen: list[BaseException] = []

    @transactional
    def bump(unit: UnitOfWork) -> None:
        unit.session.execute(text("UPDATE uow_test_items SET qty = qty + 1"))
        if not seen:
            pid = unit.session.execute(text("SELECT pg_backend_pid()")).scalar_one()
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            time.sleep(0.2)
            try:
                unit.session.execute(text("SELECT 1"))
            except ConnectionLost as exc:
                seen.append(exc)
                raise

    bump()
    assert len(seen) == 1
    assert qty(admin, "apple") == 1
    assert database.status().checked_out == 0


@pytest.mark.parametrize("wait", [0, 20])
def test_connection_lost_during_commit_is_not_retried(
    database: Database, admin: psycopg.Connection[Any], wait: float
) -> None:
    """A connection lost while COMMIT is in flight raises CommitOutcomeUnknown, never retried,
    not even while waiting out an outage."""
    calls = 0

    def slow_commit(unit: UnitOfWork) -> None:
        nonlocal calls
        calls += 1
        session = unit.session
        session.execute(text("CREATE TEMP TABLE slow_commit (x int)"))
        session.execute(
            text(
                "CREATE FUNCTION pg_temp.sleepy() RETURNS trigger LANGUAGE plpgsql AS"
                " 'BEGIN PERFORM pg_sleep(2); RETURN NULL; END'"
            )
        )
        session.execute(
            text(
                "CREATE CONSTRAINT TRIGGER sleepy AFTER INSERT ON slow_commit"
                " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION pg_temp.sleepy()"
            )
        )
        session.execute(text("INSERT INTO slow_commit VALUES (1)"))
        pid = session.execute(text("SELECT pg_backend_pid()")).scalar_one()

        def kill_during_commit() -> None:
            time.sleep(0.5)  # COMMIT is now running the deferred 2 s trigger
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))

        threading.Thread(target=kill_during_commit, daemon=True).start()

    with pytest.raises(CommitOutcomeUnknown, match="may or may not") as info:
        run_transaction(slow_commit, wait=wait)
    assert calls == 1
    assert isinstance(info.value.__cause__, ConnectionLost)
    assert database.status().checked_out == 0
    with UnitOfWork() as unit:  # the dead connection was discarded
        assert unit.session.execute(text("SELECT 1")).scalar_one() == 1


def test_ctrl_c_during_a_statement_stays_keyboard_interrupt(database: Database) -> None:
    """Ctrl-C mid-statement propagates as KeyboardInterrupt, is not retried, leaks nothing."""
    calls = 0

    def slow(unit: UnitOfWork) -> None:
        nonlocal calls
        calls += 1
        unit.session.execute(text("SELECT pg_sleep(3)"))

    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    started = time.monotonic()
    with ctrl_c_raises():
        timer.start()
        try:
            with pytest.raises(KeyboardInterrupt):
                run_transaction(slow)
        finally:
            timer.cancel()
    assert calls == 1
    assert time.monotonic() - started < 2
    assert database.status().checked_out == 0
