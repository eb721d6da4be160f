"""UnitOfWork.defer(): the job commits with the unit's data, or not at all (real PostgreSQL)."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Callable
from typing import Any

import procrastinate
import psycopg
import pytest
from procrastinate.exceptions import AlreadyEnqueued
from sqlalchemy import Engine, text

from tests.conftest import libpq_dsn, run
from tests.jobs.conftest import queued
from tests.protocol_trace import Trace
from uow import (
    AsyncUnitOfWork,
    ConnectionLost,
    Database,
    StatementTimeout,
    UnitOfWork,
    UsageError,
)

Admin = psycopg.Connection[Any]


@pytest.fixture
def statement(jobs_app: procrastinate.App) -> procrastinate.tasks.Task[Any, Any, Any]:
    """A task the tests defer (no worker runs it here)."""

    @jobs_app.task(name="render_statement", queue="statements")
    def render_statement(account_id: int) -> None:
        raise AssertionError("no worker runs in these tests")

    return render_statement


def test_a_committed_unit_leaves_exactly_one_job(
    jobs_db: Database, jobs_admin: Admin, statement: Any
) -> None:
    """defer() returns the id of the one job the commit leaves, with the task's arguments."""
    with UnitOfWork() as unit:
        job_id = unit.defer(statement, account_id=7)
    rows = queued(jobs_admin)
    assert [(r["id"], r["task_name"], r["args"], r["queue_name"], r["status"]) for r in rows] == [
        (job_id, "render_statement", {"account_id": 7}, "statements", "todo")
    ]


def test_a_rolled_back_unit_leaves_no_job(
    jobs_db: Database, jobs_admin: Admin, statement: Any
) -> None:
    """An exception in the block rolls the job back with the data."""
    with pytest.raises(RuntimeError), UnitOfWork() as unit:
        unit.defer(statement, account_id=7)
        raise RuntimeError("boom")
    assert queued(jobs_admin) == []


def test_no_job_is_visible_before_the_commit(
    jobs_db: Database, jobs_admin: Admin, statement: Any
) -> None:
    """Another connection (a worker's) sees nothing until the unit commits."""
    with UnitOfWork() as unit:
        unit.defer(statement, account_id=7)
        assert queued(jobs_admin) == []
    assert len(queued(jobs_admin)) == 1


def test_async_units_defer_with_the_same_rules(
    jobs_db: Database, jobs_admin: Admin, statement: Any
) -> None:
    """await unit.defer(): invisible before the commit, kept by a commit, gone on rollback."""

    async def scenario() -> int:
        async with AsyncUnitOfWork() as unit:
            job_id = await unit.defer(statement, account_id=1)
            assert queued(jobs_admin) == []
        with pytest.raises(RuntimeError):
            async with AsyncUnitOfWork() as unit:
                await unit.defer(statement, account_id=2)
                raise RuntimeError("boom")
        await jobs_db.dispose_async()
        return job_id

    job_id = run(scenario())
    assert [(r["id"], r["args"]) for r in queued(jobs_admin)] == [(job_id, {"account_id": 1})]


def test_configured_tasks_keep_their_options(
    jobs_db: Database, jobs_admin: Admin, statement: Any
) -> None:
    """queue, lock, queueing_lock, priority and schedule_in reach procrastinate's row."""
    before = datetime.datetime.now(datetime.UTC)
    with UnitOfWork() as unit:
        unit.defer(
            statement.configure(
                queue="slow",
                lock="account-7",
                queueing_lock="statement-7",
                priority=5,
                schedule_in={"hours": 1},
            ),
            account_id=7,
        )
    [row] = queued(jobs_admin)
    assert (row["queue_name"], row["lock"], row["queueing_lock"], row["priority"]) == (
        "slow",
        "account-7",
        "statement-7",
        5,
    )
    assert (
        before + datetime.timedelta(minutes=59)
        < row["scheduled_at"]
        < before + datetime.timedelta(minutes=61)
    )


def test_a_taken_queueing_lock_raises_already_enqueued(
    jobs_db: Database, jobs_admin: Admin, statement: Any
) -> None:
    """A waiting job's queueing lock: AlreadyEnqueued; in a savepoint, the unit carries on."""
    once = statement.configure(queueing_lock="statement-7")
    with UnitOfWork() as unit:
        unit.defer(once, account_id=7)
    with pytest.raises(AlreadyEnqueued), UnitOfWork() as unit:
        unit.defer(once, account_id=7)
    with UnitOfWork() as unit:
        with pytest.raises(AlreadyEnqueued), unit.savepoint():
            unit.defer(once, account_id=7)
        unit.defer(statement, account_id=8)
    assert [r["args"] for r in queued(jobs_admin)] == [{"account_id": 7}, {"account_id": 8}]


def test_a_joined_unit_defers_in_the_outer_transaction(
    jobs_db: Database, jobs_admin: Admin, statement: Any
) -> None:
    """A job deferred in a nested unit goes when the outer unit rolls back."""
    with pytest.raises(RuntimeError), UnitOfWork():
        with UnitOfWork() as inner:
            inner.defer(statement, account_id=7)
        assert queued(jobs_admin) == []
        raise RuntimeError("boom")
    assert queued(jobs_admin) == []


def test_misuse_raises_usage_errors(jobs_db: Database, jobs_admin: Admin, statement: Any) -> None:
    """Outside the block, in a readonly unit, or with something that is no task: UsageError."""
    unit = UnitOfWork()
    with pytest.raises(UsageError, match="not active"):
        unit.defer(statement, account_id=7)
    with (
        pytest.raises(UsageError, match="readonly unit of work cannot defer"),
        UnitOfWork(readonly=True) as ro,
    ):
        ro.defer(statement, account_id=7)
    with pytest.raises(UsageError, match="procrastinate task"), UnitOfWork() as unit:
        unit.defer(print, account_id=7)
    assert queued(jobs_admin) == []


def test_arguments_that_are_not_json_raise_usage_error(
    jobs_db: Database, jobs_admin: Admin, statement: Any
) -> None:
    """A date as an argument: UsageError saying what to pass; nothing was sent, the unit goes on."""
    with UnitOfWork() as unit:
        with pytest.raises(UsageError, match=r"stored as JSON.*datetime is not JSON"):
            unit.defer(statement, account_id=7, when=datetime.datetime.now(datetime.UTC))
        unit.defer(statement, account_id=8)
    assert [r["args"] for r in queued(jobs_admin)] == [{"account_id": 8}]


def test_defer_costs_one_round_trip(
    jobs_db: Database, jobs_admin: Admin, statement: Any, trace: Callable[[Engine], Trace]
) -> None:
    """A unit that only defers sends BEGIN, procrastinate's insert, COMMIT: nothing more."""
    traced = trace(jobs_db.engine)
    with UnitOfWork() as unit:  # opens the connection: not counted
        unit.session.execute(text("SELECT 1"))
    traced.take()
    with UnitOfWork() as unit:
        unit.defer(statement, account_id=7)
    count, statements = traced.take()
    assert count == 3, statements
    assert statements[0] == "BEGIN" and statements[2] == "COMMIT"
    assert statements[1].startswith("SELECT  unnest(")  # procrastinate's defer_jobs query


def test_a_sync_unit_defers_while_the_app_is_open(
    jobs_db: Database, jobs_admin: Admin, jobs_app: procrastinate.App, statement: Any
) -> None:
    """In a worker (the app opened for asyncio) a sync task's unit defers on its connection."""

    def defer_in_a_thread() -> int:
        with UnitOfWork() as unit:
            return unit.defer(statement, account_id=7)

    async def scenario() -> int:
        async with jobs_app.open_async():
            return await asyncio.to_thread(defer_in_a_thread)

    job_id = run(scenario())
    assert [r["id"] for r in queued(jobs_admin)] == [job_id]


def backend_pid(unit: UnitOfWork) -> int:
    """The server process of the unit's connection."""
    return int(unit.session.execute(text("SELECT pg_backend_pid()")).scalar_one())


def test_a_lost_connection_raises_connection_lost(
    jobs_db: Database, jobs_admin: Admin, statement: Any
) -> None:
    """The insert's driver errors are classified as the unit's statements' are, and the
    dead connection is discarded: run_transaction would retry, the next unit works."""
    with pytest.raises(ConnectionLost), UnitOfWork() as unit:
        jobs_admin.execute("SELECT pg_terminate_backend(%s)", (backend_pid(unit),))
        unit.defer(statement, account_id=7)
    with UnitOfWork() as unit:
        unit.defer(statement, account_id=8)
    assert [r["args"] for r in queued(jobs_admin)] == [{"account_id": 8}]


def test_an_insert_waiting_too_long_raises_statement_timeout(
    jobs_db: Database, jobs_url: str, jobs_admin: Admin, statement: Any
) -> None:
    """An insert waiting on another transaction's queueing lock ends at the unit's timeout."""
    once = statement.configure(queueing_lock="statement-7")
    with psycopg.connect(libpq_dsn(jobs_url)) as other:  # holds the lock, uncommitted
        other.execute(
            "INSERT INTO procrastinate_jobs (queue_name, task_name, queueing_lock, args)"
            " VALUES ('statements', 'render_statement', 'statement-7', '{}')"
        )
        with pytest.raises(StatementTimeout), UnitOfWork(timeout=0.3) as unit:
            unit.defer(once, account_id=7)
        other.rollback()
    assert queued(jobs_admin) == []


def test_async_a_lost_connection_raises_connection_lost(
    jobs_db: Database, jobs_admin: Admin, statement: Any
) -> None:
    """await unit.defer() on a terminated connection: ConnectionLost, nothing left checked out."""

    async def scenario() -> None:
        with pytest.raises(ConnectionLost):
            async with AsyncUnitOfWork() as unit:
                pid = (await unit.session.execute(text("SELECT pg_backend_pid()"))).scalar_one()
                jobs_admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
                await unit.defer(statement, account_id=7)
        async with AsyncUnitOfWork() as unit:
            await unit.defer(statement, account_id=8)
        assert jobs_db.async_engine.pool.checkedout() == 0
        await jobs_db.dispose_async()

    run(scenario())
    assert [r["args"] for r in queued(jobs_admin)] == [{"account_id": 8}]
