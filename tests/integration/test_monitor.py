"""Leak and long-transaction reports name where the unit of work was opened."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import psycopg
import pytest
from sqlalchemy import text

from tests.conftest import MakeDatabase
from uow import ConnectionLost, UnitOfWork


def test_long_transaction_and_leak_are_reported_once_with_origin(
    make_database: MakeDatabase, caplog: pytest.LogCaptureFixture
) -> None:
    """A transaction held past both thresholds is reported once each, then on return."""
    caplog.set_level(logging.INFO, logger="uow")
    database = make_database(long_transaction_threshold=0.2, leak_detection_threshold=0.4)
    with UnitOfWork(database) as unit:  # the line the reports must name
        line = sys._getframe().f_lineno - 1
        unit.session.execute(text("SELECT 1"))
        time.sleep(0.8)
    origin = f"test_monitor.py:{line}"
    messages = [r.getMessage() for r in caplog.records if r.name == "uow"]
    long_reports = [m for m in messages if m.startswith("long transaction")]
    leak_reports = [m for m in messages if m.startswith("possible connection leak")]
    returns = [m for m in messages if "came back after" in m]
    assert len(long_reports) == 1 and origin in long_reports[0]
    assert len(leak_reports) == 1 and origin in leak_reports[0]
    assert len(returns) == 1 and origin in returns[0]
    counters = database.counters()
    assert (counters["long_transactions"], counters["leaks"]) == (1, 1)


def test_leak_report_can_carry_the_stack(
    make_database: MakeDatabase, caplog: pytest.LogCaptureFixture
) -> None:
    """With leak_detection_stack=True the report includes the opening stack."""
    database = make_database(leak_detection_threshold=0.1, leak_detection_stack=True)

    def open_and_hold() -> None:
        with UnitOfWork(database) as unit:
            unit.session.execute(text("SELECT 1"))
            time.sleep(0.4)

    open_and_hold()
    (report,) = [
        r.getMessage() for r in caplog.records if "possible connection leak" in r.getMessage()
    ]
    assert "open_and_hold" in report
    assert "test_leak_report_can_carry_the_stack" in report  # the caller, from the stack


def test_short_units_are_not_reported(
    make_database: MakeDatabase, caplog: pytest.LogCaptureFixture
) -> None:
    """Units well under the thresholds produce no report and count nothing."""
    database = make_database(long_transaction_threshold=0.5, leak_detection_threshold=1)
    for _ in range(20):
        with UnitOfWork(database) as unit:
            unit.session.execute(text("SELECT 1"))
    time.sleep(0.2)
    assert "long transaction" not in caplog.text
    assert database.counters()["long_transactions"] == 0


def test_idle_in_transaction_is_ended_by_the_server_and_named(
    make_database: MakeDatabase,
    admin: psycopg.Connection[Any],
    app_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A unit idle past idle_in_transaction_timeout is ended by the server and reported.

    The connection is discarded, the next unit succeeds, nothing is left checked out
    or idle in transaction, and the long-transaction report named the offender.
    """
    database = make_database(idle_in_transaction_timeout=0.5, long_transaction_threshold=0.3)
    with pytest.raises(ConnectionLost), UnitOfWork(database) as unit:
        unit.session.execute(text("SELECT 1"))
        time.sleep(1.2)  # e.g. an HTTP call made while the transaction is open
        unit.session.execute(text("SELECT 1"))
    assert "test_monitor.py" in caplog.text
    assert "long transaction" in caplog.text
    with UnitOfWork(database) as unit:
        assert unit.session.execute(text("SELECT 1")).scalar_one() == 1
    assert database.status().checked_out == 0
    idle = admin.execute(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE application_name = %s AND state LIKE 'idle in transaction%%'",
        (app_name,),
    ).fetchone()
    assert idle == (0,)
