"""Monthly statements as jobs: 202 and a status endpoint, real workers, bad input is a 4xx."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

import uow.jobs
from examples.bank import jobs, services, statements
from examples.bank.api import create_app
from examples.bank.unit_of_work import BankUnitOfWork
from tests.examples.test_api import call, open_account, serving
from tests.helpers import ROOT, wait_for
from uow import Database

THIS_MONTH = f"{datetime.now(UTC):%Y-%m}"


def previous_month() -> str:
    today = datetime.now(UTC).date()
    first = date(today.year - (today.month == 1), (today.month - 2) % 12 + 1, 1)
    return f"{first:%Y-%m}"


@pytest.fixture
def statements_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where the jobs write statements, for this test only."""
    monkeypatch.setenv("BANK_STATEMENTS_DIR", str(tmp_path / "statements"))
    return tmp_path / "statements"


@pytest.fixture
def bank(
    bank_db: Database, bank_admin: psycopg.Connection[Any], statements_dir: Path
) -> Iterator[Database]:
    """Empty bank tables and no procrastinate jobs left over from other tests."""
    bank_admin.execute("TRUNCATE procrastinate_jobs RESTART IDENTITY CASCADE")
    yield bank_db


@pytest.fixture
def api(bank: Database) -> Iterator[str]:
    """The bank API, served over HTTP; yields its base URL."""
    with serving(create_app(bank)) as url:
        yield url


def run_jobs(database: Database) -> None:
    """Run procrastinate's worker in this process until the statements queue is empty."""
    with jobs.app.replace_connector(uow.jobs.connector(database)) as app:
        app.run_worker(queues=[jobs.STATEMENTS_QUEUE], wait=False, install_signal_handlers=False)


def request(api: str, account_id: int, month: str) -> tuple[int, dict[str, str], Any]:
    return call("POST", f"{api}/accounts/{account_id}/statements?month={month}")


def test_a_statement_request_answers_202_and_a_worker_renders_it(
    api: str, bank: Database, statements_dir: Path
) -> None:
    """202 with the job id and a Location; todo until a worker runs it, then the file."""
    ann = open_account(api, "ann", 1_000)
    bob = open_account(api, "bob")
    call(
        "POST", f"{api}/transfers", {"source_id": ann, "target_id": bob, "amount": 300, "key": "t1"}
    )

    status, headers, body = request(api, ann, THIS_MONTH)

    assert status == 202, body
    assert headers["location"] == f"/statements/{body['id']}" == body["status_url"]
    assert isinstance(body["job_id"], int)
    assert (body["month"], body["new"]) == (THIS_MONTH, True)
    status, _, before = call("GET", f"{api}{headers['location']}")
    assert (status, before["status"], before["file"]) == (200, "todo", None)

    run_jobs(bank)

    status, _, after = call("GET", f"{api}{headers['location']}")
    assert (status, after["status"], after["movements"]) == (200, "succeeded", 2)
    path = Path(after["file"])
    assert path.parent == statements_dir.resolve()
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["kind"], int(row["amount"])) for row in rows] == [
        ("deposit", 1_000),
        ("transfer out", -300),
    ]
    assert [p.name for p in statements_dir.iterdir()] == [path.name]  # no temporary file left


def test_a_repeated_request_returns_the_pending_one_and_a_final_month_is_rendered_once(
    api: str, bank: Database
) -> None:
    """Pending: the same request and job. A month that is over: rendered once, then reused."""
    ann = open_account(api, "ann", 1_000)
    _, _, first = request(api, ann, THIS_MONTH)
    _, _, again = request(api, ann, THIS_MONTH)
    _, _, past = request(api, ann, previous_month())

    assert (again["id"], again["job_id"], again["new"]) == (first["id"], first["job_id"], False)
    run_jobs(bank)

    _, _, past_again = request(api, ann, previous_month())
    _, _, current_again = request(api, ann, THIS_MONTH)
    assert (past_again["id"], past_again["new"]) == (past["id"], False)  # final: reused
    assert current_again["new"] and current_again["id"] != first["id"]  # still growing
    _, _, rendered = call("GET", f"{api}/statements/{past['id']}")
    assert (rendered["status"], rendered["movements"]) == ("succeeded", 0)


def test_concurrent_requests_make_one_request_and_one_job(
    bank: Database, bank_admin: psycopg.Connection[Any]
) -> None:
    """8 threads ask at once: the partial unique index lets one in, the others return it."""
    ann = services.open_account(BankUnitOfWork(bank), "ann", 100)
    barrier = threading.Barrier(8)
    tickets: list[statements.StatementTicket] = []

    def ask() -> None:
        barrier.wait()
        tickets.append(statements.request_statement(BankUnitOfWork(bank), ann, THIS_MONTH))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(tickets) == 8
    assert len({(t.id, t.job_id) for t in tickets}) == 1
    assert sum(t.new for t in tickets) == 1
    jobs_made = bank_admin.execute("SELECT count(*) FROM procrastinate_jobs").fetchone()
    assert jobs_made == (1,)


def test_a_rolled_back_request_leaves_no_job(
    bank: Database, bank_admin: psycopg.Connection[Any]
) -> None:
    """The request and its job commit together: a unit that fails leaves neither."""
    ann = services.open_account(BankUnitOfWork(bank), "ann", 100)

    with pytest.raises(RuntimeError), BankUnitOfWork(bank):
        statements.request_statement(BankUnitOfWork(bank), ann, THIS_MONTH)  # joins the unit
        raise RuntimeError("the request failed after deferring")

    counts = bank_admin.execute(
        "SELECT (SELECT count(*) FROM procrastinate_jobs),"
        " (SELECT count(*) FROM statement_requests)"
    ).fetchone()
    assert counts == (0, 0)


def test_rendering_again_is_harmless(bank: Database, statements_dir: Path) -> None:
    """A rerun of a done job returns the same file and changes nothing."""
    ann = services.open_account(BankUnitOfWork(bank), "ann", 100)
    ticket = statements.request_statement(BankUnitOfWork(bank), ann, THIS_MONTH)

    first = statements.render(BankUnitOfWork(bank), ticket.id, statements_dir)
    written = first.path.stat().st_mtime_ns
    second = statements.render(BankUnitOfWork(bank), ticket.id, statements_dir)

    assert second == first
    assert first.path.stat().st_mtime_ns == written
    assert statements.statement_status(BankUnitOfWork(bank), ticket.id).status == "succeeded"


@pytest.mark.parametrize(
    ("month", "says"),
    [
        ("2026-13", "is not a calendar month"),
        ("0000-01", "is not a calendar month"),
        ("202612", "must be YYYY-MM"),
        ("2026-1", "must be YYYY-MM"),
        ("%00", "must be YYYY-MM"),
        ("9999-12", "has not started"),
    ],
)
def test_a_bad_month_is_a_422_that_says_what_to_send(api: str, month: str, says: str) -> None:
    """A malformed or future month: 422 with a message, never a 500, and no job."""
    ann = open_account(api, "ann")

    status, _, body = request(api, ann, month)

    assert status == 422, body
    assert says in body["detail"]


def test_unknown_accounts_and_requests_are_404_and_bad_ids_422(api: str) -> None:
    """An unknown account or request: 404 naming it; a missing month or a bad id: 422."""
    status, _, body = request(api, 999, THIS_MONTH)
    assert (status, body["detail"]) == (404, "account 999 does not exist")
    status, _, body = call("GET", f"{api}/statements/999")
    assert (status, body["detail"]) == (404, "statement request 999 does not exist")
    ann = open_account(api, "ann")
    assert call("POST", f"{api}/accounts/{ann}/statements")[0] == 422  # no month
    assert call("GET", f"{api}/statements/0")[0] == 422
    assert call("GET", f"{api}/statements/x")[0] == 422


def test_the_worker_command_renders_statements_and_stops_on_sigterm(
    bank: Database, bank_url: str, statements_dir: Path
) -> None:
    """`python -m examples.bank worker` runs the jobs; SIGTERM stops it cleanly (exit 0)."""
    ann = services.open_account(BankUnitOfWork(bank), "ann", 100)
    ticket = statements.request_statement(BankUnitOfWork(bank), ann, THIS_MONTH)
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("UOW_", "DATABASE_"))}
    worker = subprocess.Popen(
        [sys.executable, "-m", "examples.bank", "worker", "--concurrency", "2"],
        cwd=ROOT,
        env={**environ, "DATABASE_URL": bank_url, "BANK_STATEMENTS_DIR": str(statements_dir)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        done = wait_for(
            lambda: (
                statements.statement_status(BankUnitOfWork(bank), ticket.id).status == "succeeded"
                or worker.poll() is not None
            ),
            timeout=60,
            what="the worker to render the statement",
        )
        assert done and worker.poll() is None, worker.communicate()[0]
        worker.send_signal(signal.SIGTERM)
        output, _ = worker.communicate(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()
    assert worker.returncode == 0, output
    found = statements.statement_status(BankUnitOfWork(bank), ticket.id)
    assert found.path is not None and Path(found.path).exists()
