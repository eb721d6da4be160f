"""Monthly statements: asked for in a request, rendered to a file by a job.

A statement lists every movement of one account in one calendar month (UTC), as a CSV
file. Rendering one is the bank's heavy work, so a request does not do it:
:func:`request_statement` records a ``statement_requests`` row and defers the
``bank.render_statement`` job (:mod:`examples.bank.jobs`) **in the same unit of work**.
Both commit together or not at all: a request is never lost between its commit and the
hand-off to a queue, and a rolled-back one leaves no job behind.

Requests are never duplicated: at most one request per account and month is pending (a
partial unique index), and a repeated request returns it with its job. A month that
is over is rendered once; the current month, which still grows, is rendered again when
asked once the previous rendering is done.

The job is idempotent, so a rerun after a crash is harmless: :func:`render` writes the
file under a name fixed by the request (a temporary file renamed over it, so a reader
never sees half a file) and marks the request done in one unit of work; a rerun finds
it done and does nothing, and one after a crash between the rename and the commit
writes the same file again.

Errors: :class:`StatementNotFound` (no request has this id), and the services' own
``AccountNotFound`` and ``InvalidRequest`` (a malformed or future month).
"""

from __future__ import annotations

import csv
import os
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from datetime import time as clock
from pathlib import Path
from typing import Literal

from sqlalchemy import or_

from . import jobs
from .models import LedgerEntry, StatementRequest
from .repositories import PENDING_STATEMENT_INDEX
from .services import AccountNotFound, BankError, InvalidRequest, _line, _retry_after_duplicate_key
from .unit_of_work import BankUnitOfWork

__all__ = [
    "Rendered",
    "StatementNotFound",
    "StatementStatus",
    "StatementTicket",
    "mark_failed",
    "month_bounds",
    "parse_month",
    "render",
    "render_now",
    "request_statement",
    "statement_status",
]

Status = Literal["todo", "doing", "succeeded", "failed", "cancelled", "aborted"]

_MONTH = re.compile(r"[0-9]{4}-[0-9]{2}")
_STATUSES: dict[str, Status] = {
    name: name for name in ("todo", "doing", "succeeded", "failed", "cancelled", "aborted")
}
_HEADER = ("entry_id", "created_at", "kind", "amount", "counterparty_id", "key")


class StatementNotFound(BankError, LookupError):
    """No statement request has this id."""

    def __init__(self, request_id: int) -> None:
        """Record the missing id."""
        super().__init__(f"statement request {request_id} does not exist")
        self.request_id = request_id


@dataclass(frozen=True, slots=True)
class StatementTicket:
    """What a statement request answers: the request and the job that renders it."""

    id: int
    account_id: int
    month: date
    job_id: int | None
    new: bool
    """False when an earlier request (pending, or a final statement) was returned."""


@dataclass(frozen=True, slots=True)
class StatementStatus:
    """Where a statement request stands."""

    id: int
    account_id: int
    month: date
    status: Status
    """procrastinate's words: todo, doing, succeeded, failed (cancelled, aborted)."""
    job_id: int | None
    path: str | None
    """The rendered file, once succeeded."""
    movements: int | None


@dataclass(frozen=True, slots=True)
class Rendered:
    """A rendered statement file."""

    path: Path
    movements: int


def parse_month(text: str, *, today: date | None = None) -> date:
    """The first day of the month ``YYYY-MM``; raises InvalidRequest for a bad or future one."""
    if not isinstance(text, str) or not _MONTH.fullmatch(text):
        raise InvalidRequest(f"the month must be YYYY-MM, such as 2026-11, not {text!r:.40}")
    try:
        first = date(int(text[:4]), int(text[5:]), 1)
    except ValueError:
        raise InvalidRequest(
            f"the month {text!r} is not a calendar month: the year must be 0001 or later"
            " and the month 01 to 12"
        ) from None
    today = today or datetime.now(UTC).date()
    if first > today.replace(day=1):
        raise InvalidRequest(
            f"the month {text} has not started (today is {today.isoformat()} UTC);"
            " ask for this month or an earlier one"
        )
    return first


def month_bounds(first: date) -> tuple[datetime, datetime]:
    """The month's first instant and the next month's, in UTC."""
    following = date(first.year + first.month // 12, first.month % 12 + 1, 1)
    return datetime.combine(first, clock(), UTC), datetime.combine(following, clock(), UTC)


def request_statement(uow: BankUnitOfWork, account_id: int, month: str | date) -> StatementTicket:
    """Ask for an account's statement of a month; returns the request and its job id.

    Records the request and defers its job in one unit of work. A repeated request
    returns the pending one, or the final statement of a month that is over.

    Raises:
        AccountNotFound, InvalidRequest (a malformed or future month).
    """
    first = parse_month(month) if isinstance(month, str) else month
    return _retry_after_duplicate_key(
        lambda: _request(uow, account_id, first), constraint=PENDING_STATEMENT_INDEX
    )


def _request(uow: BankUnitOfWork, account_id: int, first: date) -> StatementTicket:
    with uow:
        if uow.accounts.get(account_id) is None:
            raise AccountNotFound(account_id)
        found = uow.statements.reusable(account_id, first)
        if found is not None:
            return _ticket(found, new=False)
        request = uow.statements.add(StatementRequest(account_id=account_id, month=first))
        uow.statements.flush()  # the job needs the request's id
        # In this unit's transaction: the job exists if and only if the request commits.
        request.job_id = uow.defer(jobs.render_statement, request_id=request.id)
    return _ticket(request, new=True)


def _ticket(request: StatementRequest, *, new: bool) -> StatementTicket:
    return StatementTicket(
        id=request.id,
        account_id=request.account_id,
        month=request.month,
        job_id=request.job_id,
        new=new,
    )


def statement_status(uow: BankUnitOfWork, request_id: int) -> StatementStatus:
    """Where a request stands: its job's status, and the file once rendered.

    Raises:
        StatementNotFound: no request has this id.
    """
    with uow:
        request = uow.statements.get(request_id)
        if request is None:
            raise StatementNotFound(request_id)
        status: Status
        if request.status == "done":
            status = "succeeded"  # the file exists, whatever procrastinate still says
        elif request.status == "failed":
            status = "failed"
        else:
            # A finished job's row may be deleted (the worker's delete_jobs option).
            job = uow.statements.job_status(request.job_id) if request.job_id else None
            status = _STATUSES.get(job or "todo", "todo")
        return StatementStatus(
            id=request.id,
            account_id=request.account_id,
            month=request.month,
            status=status,
            job_id=request.job_id,
            path=request.path,
            movements=request.movements,
        )


def render(
    uow: BankUnitOfWork, request_id: int, directory: Path, *, pause: float = 0.0
) -> Rendered:
    """Render a requested statement into ``directory`` and mark the request done.

    What the job runs. Idempotent: a request already done is left as it is, and the
    file's name depends on the request only, so a rerun after a crash rewrites the same
    file. ``pause`` (seconds, with the unit of work open) stands for a slow renderer,
    such as a PDF one: the storm sets it.

    Raises:
        StatementNotFound: no request has this id.
    """
    with uow:
        request = uow.statements.get_for_update(request_id)  # one renderer at a time
        if request is None:
            raise StatementNotFound(request_id)
        if request.status == "done" and request.path is not None:
            return Rendered(Path(request.path), request.movements or 0)
        began = datetime.now(UTC)
        name = f"account-{request.account_id}-{request.month:%Y-%m}-{request.id}.csv"
        path = directory / name
        movements = _write(uow, request.account_id, request.month, path, pause)
        request.status = "done"
        request.path = str(path)
        request.movements = movements
        # Rendered after the month ended: nothing can change it, later requests reuse it.
        request.complete = began >= month_bounds(request.month)[1]
        request.done_at = datetime.now(UTC)
    return Rendered(path, movements)


def render_now(
    uow: BankUnitOfWork, account_id: int, month: str | date, directory: Path, *, pause: float = 0.0
) -> Rendered:
    """Render a statement in the caller, as an app without workers would: for comparison.

    The storm's ``statements-inline`` mode runs this in the request, holding the
    request's connection and thread for the whole rendering.

    Raises:
        AccountNotFound, InvalidRequest (a malformed or future month).
    """
    first = parse_month(month) if isinstance(month, str) else month
    with uow:
        if uow.accounts.get(account_id) is None:
            raise AccountNotFound(account_id)
        name = f"account-{account_id}-{first:%Y-%m}-inline-{os.getpid()}-{time.monotonic_ns()}.csv"
        path = directory / name
        return Rendered(path, _write(uow, account_id, first, path, pause))


def mark_failed(uow: BankUnitOfWork, request_id: int) -> None:
    """Mark a pending request failed, so that a new request for its month may start."""
    with uow:
        request = uow.statements.get_for_update(request_id)
        if request is not None and request.status == "pending":
            request.status = "failed"


def _write(uow: BankUnitOfWork, account_id: int, first: date, path: Path, pause: float) -> int:
    start, end = month_bounds(first)
    entries = uow.ledger.list(
        or_(LedgerEntry.source_id == account_id, LedgerEntry.target_id == account_id),
        LedgerEntry.created_at >= start,
        LedgerEntry.created_at < end,
        order_by=LedgerEntry.id,
    )
    if pause:
        time.sleep(pause)

    def rows(write: Callable[[tuple[object, ...]], object]) -> None:
        write(_HEADER)
        for entry in entries:
            line = _line(account_id, entry)
            created = line.created_at.isoformat() if line.created_at else ""
            write((line.entry_id, created, line.kind, line.amount, line.counterparty_id, line.key))

    _atomic_write(path, rows)
    return len(entries)


def _atomic_write(
    path: Path, rows: Callable[[Callable[[tuple[object, ...]], object]], None]
) -> None:
    """Write a CSV file whole or not at all: a temporary file, fsynced, renamed over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # In the same directory: a rename within one file system is atomic.
    handle = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed below, renamed or removed
        "w", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False, newline=""
    )
    try:
        with handle:
            rows(csv.writer(handle).writerow)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
