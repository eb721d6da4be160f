"""What a failed COMMIT tells the caller: a session the server ended before COMMIT is retried.

``idle_in_transaction_session_timeout`` ends a session whose transaction sat idle too long
(SQLSTATE 25P03): the server rolled it back before it read the COMMIT, so nothing was
written and the error is :class:`~uow.ConnectionLost`, never ``CommitOutcomeUnknown``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
from sqlalchemy import text

from tests.faults.driver import Driver
from tests.faults.helpers import FaultWatch
from uow import (
    AsyncUnitOfWork,
    CommitOutcomeUnknown,
    ConnectionLost,
    UnitOfWork,
    run_transaction,
    run_transaction_async,
)

TABLE = "commit_outcome"
INSERT = text(f"INSERT INTO {TABLE} (key) VALUES (:key)")


@pytest.fixture
def table(fault: FaultWatch) -> str:
    fault.side.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (key text PRIMARY KEY)")
    fault.side.execute(f"TRUNCATE {TABLE}")
    return TABLE


def rows(fault: FaultWatch) -> list[str]:
    return [str(key) for (key,) in fault.query(f"SELECT key FROM {TABLE} ORDER BY key")]


def test_a_session_ended_idle_before_commit_is_connection_lost(
    fault: FaultWatch, driver: Driver, table: str
) -> None:
    """25P03 met by COMMIT: ConnectionLost (nothing written), not CommitOutcomeUnknown."""
    db = fault.database(idle_in_transaction_timeout=0.5, pool_size=2, max_overflow=0)
    seen: dict[str, Any] = {}

    def worker(i: int) -> None:
        try:
            with driver.unit(db) as unit:
                unit.execute(INSERT, {"key": "slow"})
                driver.sleep(1.5)  # the server ends the session meanwhile
        except (ConnectionLost, CommitOutcomeUnknown) as exc:
            seen["error"] = exc

    driver.run(1, worker, timeout=30)
    error = seen["error"]
    assert type(error) is ConnectionLost, repr(error)
    assert isinstance(error.__cause__, psycopg.errors.IdleInTransactionSessionTimeout)
    assert "25P03" in str(error)
    assert "nothing was written" in str(error)
    assert rows(fault) == []
    assert db.stats().pool_checked_out == 0


def test_run_transaction_retries_a_session_ended_idle(
    fault: FaultWatch, driver: Driver, table: str
) -> None:
    """run_transaction runs the unit again after a 25P03 at COMMIT; the row is written once."""
    db = fault.database(idle_in_transaction_timeout=0.5, pool_size=2, max_overflow=0)
    attempts: list[int] = []

    def sync(unit: UnitOfWork) -> None:
        attempts.append(1)
        unit.session.execute(INSERT, {"key": "once"})
        if len(attempts) == 1:
            driver.sleep(1.5)

    async def asynchronous(unit: AsyncUnitOfWork) -> None:
        attempts.append(1)
        await unit.session.execute(INSERT, {"key": "once"})
        if len(attempts) == 1:
            await asyncio.sleep(1.5)

    def worker(i: int) -> None:
        driver.call(
            lambda: run_transaction(sync, database=db, backoff=0.01),
            lambda: run_transaction_async(asynchronous, database=db, backoff=0.01),
        )

    driver.run(1, worker, timeout=30)
    assert len(attempts) == 2
    assert rows(fault) == ["once"]
    assert db.stats().pool_checked_out == 0
