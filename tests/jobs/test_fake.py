"""FakeUnitOfWork.defer(): the in-memory fake records jobs as the real unit inserts them."""

from __future__ import annotations

import datetime
import subprocess
import sys
from typing import Any

import pytest
from procrastinate.exceptions import AlreadyEnqueued

import uow.jobs
from uow import UsageError
from uow.testing import DeferredJob, FakeUnitOfWork, InMemoryStore

# As an application's jobs module writes it: building the app connects nowhere and needs
# no DATABASE_URL (the default database is looked up on the first connection).
app = uow.jobs.app()


@app.task(name="render_statement", queue="statements")
def render_statement(account_id: int) -> None:
    raise AssertionError("never run")


def test_a_committed_unit_keeps_its_jobs_in_the_store() -> None:
    """store.jobs holds each committed job with its task, arguments and options."""
    store = InMemoryStore()
    with FakeUnitOfWork(store) as unit:
        first = unit.defer(render_statement, account_id=7)
        second = unit.defer(
            render_statement.configure(lock="a7", queueing_lock="s7", priority=3),
            account_id=8,
        )
        assert store.jobs == []  # not before the commit
    assert store.jobs == [
        DeferredJob(first, "render_statement", {"account_id": 7}, "statements"),
        DeferredJob(second, "render_statement", {"account_id": 8}, "statements", "a7", "s7", 3),
    ]


def test_a_rolled_back_unit_drops_its_jobs() -> None:
    """An exception drops the block's jobs; a failed savepoint drops only its own."""
    store = InMemoryStore()
    with pytest.raises(RuntimeError), FakeUnitOfWork(store) as unit:
        unit.defer(render_statement, account_id=1)
        raise RuntimeError("boom")
    with FakeUnitOfWork(store) as unit:
        with pytest.raises(RuntimeError), unit.savepoint():
            unit.defer(render_statement, account_id=2)
            raise RuntimeError("boom")
        unit.defer(render_statement, account_id=3)
    assert [job.kwargs for job in store.jobs] == [{"account_id": 3}]


def test_schedule_and_queueing_lock_as_procrastinate_does() -> None:
    """schedule_in sets scheduled_at; a recorded job's queueing lock raises AlreadyEnqueued."""
    store = InMemoryStore()
    before = datetime.datetime.now(datetime.UTC)
    with FakeUnitOfWork(store) as unit:
        unit.defer(render_statement.configure(schedule_in={"minutes": 5}, queueing_lock="q"))
    [job] = store.jobs
    assert job.scheduled_at is not None
    assert before + datetime.timedelta(minutes=5) <= job.scheduled_at
    with pytest.raises(AlreadyEnqueued), FakeUnitOfWork(store) as unit:
        unit.defer(render_statement.configure(queueing_lock="q"))
    assert len(store.jobs) == 1


def test_misuse_raises_as_the_real_unit_does() -> None:
    """Outside the block, in a readonly unit, with no task or non-JSON arguments: UsageError."""
    unit: Any = FakeUnitOfWork()
    with pytest.raises(UsageError, match="not active"):
        unit.defer(render_statement, account_id=1)
    with pytest.raises(UsageError, match="readonly"), FakeUnitOfWork(readonly=True) as ro:
        ro.defer(render_statement, account_id=1)
    with pytest.raises(UsageError, match="procrastinate task"), FakeUnitOfWork() as unit:
        unit.defer(print)
    with pytest.raises(UsageError, match="stored as JSON"), FakeUnitOfWork() as unit:
        unit.defer(render_statement, account_id=object())


def test_without_procrastinate_the_error_says_what_to_install() -> None:
    """uow.jobs without procrastinate: ConfigurationError naming the extra; uow itself loads."""
    code = (
        "import sys; sys.modules['procrastinate'] = None\n"
        "import uow, uow.testing\n"
        "try:\n"
        "    import uow.jobs\n"
        "except uow.ConfigurationError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run(  # noqa: S603 - our own interpreter and code
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert "pip install 'uow[jobs]'" in done.stdout, done.stderr
