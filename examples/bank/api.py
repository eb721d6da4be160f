"""The bank's HTTP API (FastAPI): one unit of work per request.

Endpoints are plain ``def`` functions: uow is synchronous, and FastAPI runs them in
its thread pool; ``/async/...`` endpoints run on AsyncUnitOfWork. Each request gets its
own unit of work from :func:`uow.fastapi.unit_of_work`, which the service enters in the
endpoint's thread (or task). :mod:`uow.fastapi` also checks the connection budget at
startup, closes the pools at shutdown and maps uow's errors to 503/504 answers without
leaking internals; domain errors are 404/409/422. A statement request answers 202:
a job renders it (:mod:`examples.bank.statements`). ``GET /metrics`` exposes the pool's
metrics to Prometheus.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import Depends, FastAPI, Path, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, ConfigDict, Field, StrictInt

import uow.fastapi
import uow.prometheus
from uow import (
    Database,
    get_database,
)

from . import async_services, services, statements
from .async_services import AsyncBankUnitOfWork
from .guards import BodyLimit, Text, validation_error
from .health import SchemaCheck, State, probe
from .services import (
    MAX_AMOUNT,
    MAX_KEY_LENGTH,
    MAX_OWNER_LENGTH,
    AccountNotFound,
    IdempotencyConflict,
    InsufficientFunds,
    InvalidRequest,
)
from .statements import StatementNotFound
from .unit_of_work import BankUnitOfWork

__all__ = ["create_app"]

logger = logging.getLogger("examples.bank.api")

RETRY_AFTER_SECONDS = 1  # a pool frees up within milliseconds once a burst passes
MAX_ID = 2**63 - 1  # BIGINT: a larger id could never exist, and would overflow in SQL

# Each request's unit of work, on the database given to create_app() (see uow.fastapi).
Bank = Annotated[BankUnitOfWork, Depends(uow.fastapi.unit_of_work(BankUnitOfWork))]
ReadBank = Annotated[
    BankUnitOfWork, Depends(uow.fastapi.unit_of_work(BankUnitOfWork, readonly=True))
]
# A statement reads the balance and the ledger in two queries; one snapshot keeps them
# consistent while transfers run.
Snapshot = Annotated[
    BankUnitOfWork,
    Depends(uow.fastapi.unit_of_work(BankUnitOfWork, readonly=True, isolation="REPEATABLE READ")),
]
AsyncBank = Annotated[AsyncBankUnitOfWork, Depends(uow.fastapi.unit_of_work(AsyncBankUnitOfWork))]
AsyncReadBank = Annotated[
    AsyncBankUnitOfWork, Depends(uow.fastapi.unit_of_work(AsyncBankUnitOfWork, readonly=True))
]

AccountId = Annotated[int, Path(ge=1, le=MAX_ID)]
RequestId = Annotated[int, Path(ge=1, le=MAX_ID)]
Month = Annotated[str, Query(max_length=40, description="YYYY-MM, this month or an earlier one")]
Id = Annotated[StrictInt, Field(ge=1, le=MAX_ID)]
Amount = Annotated[StrictInt, Field(gt=0, le=MAX_AMOUNT, description="cents")]
Key = Annotated[Text, Field(min_length=1, max_length=MAX_KEY_LENGTH)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NewAccount(_In):
    """``POST /accounts``."""

    owner: Annotated[Text, Field(min_length=1, max_length=MAX_OWNER_LENGTH)]
    initial: Annotated[StrictInt, Field(ge=0, le=MAX_AMOUNT, description="cents")] = 0


class NewDeposit(_In):
    """``POST /accounts/{id}/deposits``."""

    amount: Amount
    key: Key


class NewTransfer(_In):
    """``POST /transfers``."""

    source_id: Id
    target_id: Id
    amount: Amount
    key: Key


class AccountOut(BaseModel):
    """An account and its balance in cents."""

    id: int
    owner: str
    balance: int


class DepositOut(BaseModel):
    """The balance right after a deposit."""

    account_id: int
    balance: int
    key: str


class TransferOut(BaseModel):
    """A recorded transfer; ``replayed`` if an earlier request with its key made it."""

    id: int
    source_id: int
    target_id: int
    amount: int
    key: str
    replayed: bool


class LineOut(BaseModel):
    """One movement on a statement; ``amount`` is negative for money out."""

    entry_id: int
    kind: str
    amount: int
    counterparty_id: int | None
    key: str
    created_at: str | None


class StatementOut(BaseModel):
    """An account's balance and its movements, oldest first."""

    account_id: int
    owner: str
    balance: int
    lines: list[LineOut]


class StatementTicketOut(BaseModel):
    """A statement request accepted: its job renders the file; ``status_url`` tells when."""

    id: int
    account_id: int
    month: str
    job_id: int | None
    new: bool
    """False when an earlier request for this month was returned instead."""
    status_url: str


class StatementStatusOut(BaseModel):
    """A statement request's progress; ``file`` is set once it has succeeded."""

    id: int
    account_id: int
    month: str
    status: str
    """todo, doing, succeeded or failed (procrastinate's job statuses)."""
    job_id: int | None
    file: str | None
    movements: int | None


class PoolOut(BaseModel):
    """The connection pool, from ``Database.status()``."""

    size: int
    max_overflow: int
    checked_out: int
    idle: int
    waiting: int


class HealthOut(BaseModel):
    """Whether the database answers with the schema this code needs; how busy the pool is."""

    status: State
    reason: str | None = None  # when "not migrated": what to run
    pool: PoolOut


def _transfer_out(result: services.Transfer, response: Response) -> TransferOut:
    """201 when the transfer was made now, 200 when an earlier request made it."""
    if result.replayed:
        response.status_code = status.HTTP_200_OK
    return TransferOut(
        id=result.id,
        source_id=result.source_id,
        target_id=result.target_id,
        amount=result.amount,
        key=result.key,
        replayed=result.replayed,
    )


def create_app(database: Database | None = None) -> FastAPI:
    """Build the API.

    Args:
        database: where the bank lives; defaults to ``uow.get_database()`` (from
            ``DATABASE_URL``), looked up at startup, not here.
    """

    # The lifespan checks the connection budget at startup (a worker whose budget does
    # not fit refuses to start) and closes both pools at shutdown.
    app = FastAPI(title="uow example bank", version="1", lifespan=uow.fastapi.lifespan(database))
    app.add_middleware(BodyLimit)
    uow.fastapi.install_exception_handlers(app, retry_after=RETRY_AFTER_SECONDS)
    _add_error_handlers(app)
    # Replaces FastAPI's own, which echoes the whole input and cannot encode NaN.
    app.add_exception_handler(RequestValidationError, validation_error)

    @app.post("/accounts", status_code=status.HTTP_201_CREATED)
    def open_account(body: NewAccount, unit: Bank) -> AccountOut:
        """Open an account, with an optional opening deposit."""
        account_id = services.open_account(unit, body.owner, body.initial)
        return AccountOut(id=account_id, owner=body.owner.strip(), balance=body.initial)

    @app.get("/accounts/{account_id}")
    def get_account(account_id: AccountId, unit: ReadBank) -> AccountOut:
        """An account's owner and balance."""
        found = services.get_account(unit, account_id)
        return AccountOut(id=found.id, owner=found.owner, balance=found.balance)

    @app.post("/accounts/{account_id}/deposits")
    def deposit(account_id: AccountId, body: NewDeposit, unit: Bank) -> DepositOut:
        """Deposit money; repeating a request with its key changes nothing."""
        balance = services.deposit(unit, account_id, body.amount, key=body.key)
        return DepositOut(account_id=account_id, balance=balance, key=body.key)

    @app.post("/transfers", status_code=status.HTTP_201_CREATED)
    def transfer(body: NewTransfer, response: Response, unit: Bank) -> TransferOut:
        """Transfer money: 201 when made now, 200 when an earlier request made it."""
        result = services.transfer(unit, body.source_id, body.target_id, body.amount, key=body.key)
        return _transfer_out(result, response)

    @app.post("/async/transfers", status_code=status.HTTP_201_CREATED)
    async def transfer_async(body: NewTransfer, response: Response, unit: AsyncBank) -> TransferOut:
        """The same transfer on AsyncUnitOfWork: the event loop is never blocked."""
        result = await async_services.transfer(
            unit, body.source_id, body.target_id, body.amount, key=body.key
        )
        return _transfer_out(result, response)

    @app.get("/async/accounts/{account_id}")
    async def get_account_async(account_id: AccountId, unit: AsyncReadBank) -> AccountOut:
        """An account's owner and balance, read on AsyncUnitOfWork."""
        found = await async_services.get_account(unit, account_id)
        return AccountOut(id=found.id, owner=found.owner, balance=found.balance)

    @app.get("/accounts/{account_id}/statement")
    def statement(account_id: AccountId, unit: Snapshot) -> StatementOut:
        """An account's balance and every movement, oldest first."""
        found = services.statement(unit, account_id)
        return StatementOut(
            account_id=found.account_id,
            owner=found.owner,
            balance=found.balance,
            lines=[
                LineOut(
                    entry_id=line.entry_id,
                    kind=line.kind,
                    amount=line.amount,
                    counterparty_id=line.counterparty_id,
                    key=line.key,
                    created_at=line.created_at.isoformat() if line.created_at else None,
                )
                for line in found.lines
            ],
        )

    @app.post("/accounts/{account_id}/statements", status_code=status.HTTP_202_ACCEPTED)
    def request_statement(
        account_id: AccountId, month: Month, response: Response, unit: Bank
    ) -> StatementTicketOut:
        """Ask for a month's statement: 202 at once, a worker renders it (see Location)."""
        ticket = statements.request_statement(unit, account_id, month)
        where = f"/statements/{ticket.id}"
        response.headers["Location"] = where
        return StatementTicketOut(
            id=ticket.id,
            account_id=ticket.account_id,
            month=f"{ticket.month:%Y-%m}",
            job_id=ticket.job_id,
            new=ticket.new,
            status_url=where,
        )

    @app.get("/statements/{request_id}")
    def statement_status(request_id: RequestId, unit: ReadBank) -> StatementStatusOut:
        """A statement request's status, and its file once rendered."""
        found = statements.statement_status(unit, request_id)
        return StatementStatusOut(
            id=found.id,
            account_id=found.account_id,
            month=f"{found.month:%Y-%m}",
            status=found.status,
            job_id=found.job_id,
            file=found.path,
            movements=found.movements,
        )

    schema = SchemaCheck()

    @app.get("/health")
    def health(response: Response) -> HealthOut:
        """200 if the database answers and its schema is migrated, else 503 with a reason."""
        db = database if database is not None else get_database()
        pool = db.status()  # before the check, which takes a connection itself
        state, reason = probe(db, schema)
        if state == "overloaded":
            response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
        if state != "ok":
            response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return HealthOut(
            status=state,
            reason=reason,
            pool=PoolOut(
                size=pool.size,
                max_overflow=pool.max_overflow,
                checked_out=pool.checked_out,
                idle=pool.idle,
                waiting=pool.waiting,
            ),
        )

    @app.get("/metrics", response_class=Response)
    def metrics() -> Response:
        """The pool's gauges, timers and counters in Prometheus' text format."""
        # A registry per scrape, because the database is looked up per request (tests
        # swap the default). An app with a fixed database registers it once at start-up
        # on prometheus_client's default registry instead.
        registry = CollectorRegistry()
        uow.prometheus.register(database if database is not None else get_database(), registry)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Map the bank's errors to responses that say what to do (uow's are uow.fastapi's)."""

    def detail(code: int, text: str) -> JSONResponse:
        return JSONResponse({"detail": text}, status_code=code)

    async def not_found(request: Request, exc: Exception) -> JSONResponse:
        return detail(404, str(exc))

    async def conflict(request: Request, exc: Exception) -> JSONResponse:
        return detail(409, str(exc))

    async def invalid(request: Request, exc: Exception) -> JSONResponse:
        return detail(422, str(exc))

    app.add_exception_handler(AccountNotFound, not_found)
    app.add_exception_handler(StatementNotFound, not_found)
    app.add_exception_handler(InsufficientFunds, conflict)
    app.add_exception_handler(IdempotencyConflict, conflict)
    app.add_exception_handler(InvalidRequest, invalid)
