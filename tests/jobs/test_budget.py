"""Job workers in the connection budget and in `uow doctor`: a kind of their own (real server).

Other processes are stood in for by connections that carry their application_name
(``uow-jobs:<app>[pid]``, ``uow:<app>[pid]``), as the server sees real ones.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import psycopg
import pytest

import uow.jobs
from tests.conftest import MakeDatabase, libpq_dsn
from uow import ConfigurationError, Database
from uow._ops.doctor import diagnose, render


@pytest.fixture
def name() -> str:
    """A uow application name no other test uses (marked: its processes carry their pid)."""
    return f"uow:jobs{uuid.uuid4().hex[:8]}"


@pytest.fixture
def others(postgres_url: str) -> Iterator[Any]:
    """Open n connections named as another process would be: ``others(name, n)``."""
    with ExitStack() as stack:

        def connect(application_name: str, n: int) -> None:
            for _ in range(n):
                stack.enter_context(
                    psycopg.connect(libpq_dsn(postgres_url), application_name=application_name)
                )

        yield connect


def test_a_job_worker_counts_the_job_workers_connected(
    make_database: MakeDatabase, name: str, others: Any
) -> None:
    """check_budget() counts this application's job worker processes, itself included, and
    sizes each as max_size + 1 LISTEN + the process's uow pool."""
    database = make_database(application_name=name, pool_size=3, max_overflow=1)
    job = name.replace("uow:", "uow-jobs:")
    others(f"{job}[999001]", 2)
    budget = uow.jobs.check_budget(database, max_size=2)
    assert budget is not None
    assert (budget.connected, budget.processes, budget.per_process) == (2, 2, 2 + 1 + 3 + 1)


def test_job_workers_that_do_not_fit_fail_with_the_arithmetic(
    make_database: MakeDatabase, name: str
) -> None:
    """Too many job workers for max_connections: ConfigurationError saying what to change."""
    database = make_database(application_name=name)
    with pytest.raises(ConfigurationError, match=r"1000 job worker processes x .* = \d+ conn"):
        uow.jobs.check_budget(database, processes=1000)


def test_the_check_is_off_when_the_budget_check_is(make_database: MakeDatabase) -> None:
    """UOW_CHECK_BUDGET=false turns this check off too."""
    assert uow.jobs.check_budget(make_database(check_budget=False), processes=10_000) is None


def test_web_workers_count_job_workers_as_connections_in_use(
    make_database: MakeDatabase, name: str, others: Any
) -> None:
    """A web worker's budget sees the job workers' connections as used, not as its own."""
    database = make_database(application_name=name)
    before = database.check()
    others(f"{name.replace('uow:', 'uow-jobs:')}[999002]", 3)
    after = database.check()
    assert after.used_by_others - before.used_by_others == 3
    assert after.connected == before.connected


def test_doctor_shows_web_and_job_workers_apart(
    make_database: MakeDatabase, name: str, others: Any
) -> None:
    """uow doctor: each connection's kind, and this application's processes by kind."""
    database: Database = make_database(application_name=name)
    job = name.replace("uow:", "uow-jobs:")
    others(f"{name}[999003]", 2)
    others(f"{job}[999004]", 3)
    others(f"{job}[999005]", 1)
    report = diagnose(database.settings)
    assert report.processes == {
        "web worker": {"processes": 1, "connections": 2},
        "job worker": {"processes": 2, "connections": 4},
    }
    kinds = {c["application_name"]: c["kind"] for c in report.connections}
    assert kinds[f"{job}[999004]"] == "job worker"
    assert kinds[f"{name}[999003]"] == "web worker"
    text = render(report)
    assert "This application's processes" in text and "job worker" in text
