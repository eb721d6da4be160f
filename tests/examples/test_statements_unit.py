"""Statement requests on the in-memory fake: the job is recorded when the unit commits."""

from __future__ import annotations

from datetime import date

import pytest

from examples.bank import jobs, services, statements
from examples.bank.models import StatementRequest
from examples.bank.services import AccountNotFound, InvalidRequest
from examples.bank.unit_of_work import BankUnitOfWork
from uow.testing import fake


@pytest.fixture
def bank() -> BankUnitOfWork:
    """A fake BankUnitOfWork on an empty in-memory store."""
    return fake(BankUnitOfWork)


def test_a_statement_request_defers_its_job_on_commit(bank: BankUnitOfWork) -> None:
    """One request, one job (bank.render_statement on the statements queue) with its id."""
    ann = services.open_account(bank, "ann", 100)

    ticket = statements.request_statement(bank, ann, "2026-11")

    (job,) = bank.store.jobs
    assert (job.task_name, job.queue, job.kwargs) == (
        "bank.render_statement",
        "statements",
        {"request_id": ticket.id},
    )
    assert (ticket.job_id, ticket.month, ticket.new) == (job.id, date(2026, 11, 1), True)


def test_a_repeated_request_defers_nothing_more(bank: BankUnitOfWork) -> None:
    """While the first is pending, a repeat returns it and no second job is recorded."""
    ann = services.open_account(bank, "ann", 100)
    first = statements.request_statement(bank, ann, "2026-11")

    again = statements.request_statement(bank, ann, "2026-11")

    assert (again.id, again.job_id, again.new) == (first.id, first.job_id, False)
    assert len(bank.store.jobs) == 1


def test_a_rolled_back_request_records_no_job(bank: BankUnitOfWork) -> None:
    """A unit that fails after deferring leaves no job in the store."""
    ann = services.open_account(bank, "ann", 100)

    with pytest.raises(AccountNotFound):
        statements.request_statement(bank, ann + 1, "2026-11")
    with pytest.raises(RuntimeError), bank:
        bank.statements.add(StatementRequest(account_id=ann, month=date(2026, 11, 1)))
        bank.defer(jobs.render_statement, request_id=1)
        raise RuntimeError("failed after deferring")

    assert bank.store.jobs == []


@pytest.mark.parametrize("month", ["2026-13", "26-11", "2026-1", "x", "9999-01"])
def test_a_bad_month_defers_nothing(bank: BankUnitOfWork, month: str) -> None:
    """A malformed or future month raises InvalidRequest before anything is written."""
    ann = services.open_account(bank, "ann")

    with pytest.raises(InvalidRequest):
        statements.request_statement(bank, ann, month)
    assert bank.store.jobs == []


def test_parse_month_bounds() -> None:
    """This month is accepted, the next one is not; month_bounds ends at the next month."""
    today = date(2026, 12, 4)
    assert statements.parse_month("2026-12", today=today) == date(2026, 12, 1)
    with pytest.raises(InvalidRequest, match="has not started"):
        statements.parse_month("2027-01", today=today)
    start, end = statements.month_bounds(date(2026, 12, 1))
    assert (start.date(), end.date()) == (date(2026, 12, 1), date(2027, 1, 1))
