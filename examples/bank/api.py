"""The bank's HTTP API (FastAPI): one unit of work per request.

Endpoints are plain ``def`` functions: uow is synchronous, and FastAPI runs them in
its thread pool, where each request opens its own unit of work. Errors map to
status codes without leaking internals: pool exhaustion and database outages are
503 (with ``Retry-After`` when retrying soon is the right move), domain errors
404/409/422. ``GET /metrics`` exposes the pool's metrics to Prometheus.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Annotated

from fastapi import FastAPI, Path, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, ConfigDict, Field, StrictInt
from sqlalchemy.exc import OperationalError

import uow.prometheus
from uow import (
    Database,
    DatabaseUnavailable,
    PoolExhausted,
    StatementTimeout,
    get_database,
)

from . import async_services, services
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
from .unit_of_work import BankUnitOfWork

__all__ = ["create_app"]

logger = logging.getLogger("examples.bank.api")

RETRY_AFTER_SECONDS = 1  # a pool frees up within milliseconds once a burst passes
MAX_ID = 2**63 - 1  # BIGINT: a larger id could never exist, and would overflow in SQL

AccountId = Annotated[int, Path(ge=1, le=MAX_ID)]
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


def _closing_async_pool(
    database: Database | None,
) -> Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        # The async endpoints' connections belong to this event loop: close them in it.
        await (database or get_database()).dispose_async()

    return lifespan


def create_app(database: Database | None = None) -> FastAPI:
    """Build the API.

    Args:
        database: where the bank lives; defaults to ``uow.get_database()`` (from
            ``DATABASE_URL``), looked up on the first request, not here.
    """

    app = FastAPI(title="uow example bank", version="1", lifespan=_closing_async_pool(database))
    app.add_middleware(BodyLimit)
    _add_error_handlers(app)
    # Replaces FastAPI's own, which echoes the whole input and cannot encode NaN.
    app.add_exception_handler(RequestValidationError, validation_error)

    def snapshot() -> BankUnitOfWork:
        # A statement reads the balance and the ledger in two queries; one snapshot
        # keeps them consistent while transfers run.
        return BankUnitOfWork(database, readonly=True, isolation="REPEATABLE READ")

    @app.post("/accounts", status_code=status.HTTP_201_CREATED)
    def open_account(body: NewAccount) -> AccountOut:
        """Open an account, with an optional opening deposit."""
        account_id = services.open_account(BankUnitOfWork(database), body.owner, body.initial)
        return AccountOut(id=account_id, owner=body.owner.strip(), balance=body.initial)

    @app.get("/accounts/{account_id}")
    def get_account(account_id: AccountId) -> AccountOut:
        """An account's owner and balance."""
        found = services.get_account(BankUnitOfWork(database, readonly=True), account_id)
        return AccountOut(id=found.id, owner=found.owner, balance=found.balance)

    @app.post("/accounts/{account_id}/deposits")
    def deposit(account_id: AccountId, body: NewDeposit) -> DepositOut:
        """Deposit money; repeating a request with its key changes nothing."""
        balance = services.deposit(BankUnitOfWork(database), account_id, body.amount, key=body.key)
        return DepositOut(account_id=account_id, balance=balance, key=body.key)

    @app.post("/transfers", status_code=status.HTTP_201_CREATED)
    def transfer(body: NewTransfer, response: Response) -> TransferOut:
        """Transfer money: 201 when made now, 200 when an earlier request made it."""
        result = services.transfer(
            BankUnitOfWork(database), body.source_id, body.target_id, body.amount, key=body.key
        )
        return _transfer_out(result, response)

    @app.post("/async/transfers", status_code=status.HTTP_201_CREATED)
    async def transfer_async(body: NewTransfer, response: Response) -> TransferOut:
        """The same transfer on AsyncUnitOfWork: the event loop is never blocked."""
        result = await async_services.transfer(
            AsyncBankUnitOfWork(database), body.source_id, body.target_id, body.amount, key=body.key
        )
        return _transfer_out(result, response)

    @app.get("/async/accounts/{account_id}")
    async def get_account_async(account_id: AccountId) -> AccountOut:
        """An account's owner and balance, read on AsyncUnitOfWork."""
        unit = AsyncBankUnitOfWork(database, readonly=True)
        found = await async_services.get_account(unit, account_id)
        return AccountOut(id=found.id, owner=found.owner, balance=found.balance)

    @app.get("/accounts/{account_id}/statement")
    def statement(account_id: AccountId) -> StatementOut:
        """An account's balance and every movement, oldest first."""
        found = services.statement(snapshot(), account_id)
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
    """Map errors to responses that say what to do, never how the service is built."""

    def detail(code: int, text: str, *, retry: bool = False) -> JSONResponse:
        headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if retry else None
        return JSONResponse({"detail": text}, status_code=code, headers=headers)

    async def overloaded(request: Request, exc: Exception) -> JSONResponse:
        # The message names pool sizes and settings: for the operator's log, not the client.
        logger.warning("%s %s: %s", request.method, request.url.path, exc)
        return detail(503, "the service is overloaded; retry shortly", retry=True)

    async def unavailable(request: Request, exc: Exception) -> JSONResponse:
        logger.error("%s %s: %s", request.method, request.url.path, exc)
        return detail(503, "the database is unavailable; retry later", retry=True)

    async def not_found(request: Request, exc: Exception) -> JSONResponse:
        return detail(404, str(exc))

    async def conflict(request: Request, exc: Exception) -> JSONResponse:
        return detail(409, str(exc))

    async def invalid(request: Request, exc: Exception) -> JSONResponse:
        return detail(422, str(exc))

    app.add_exception_handler(PoolExhausted, overloaded)
    # A statement cancelled by statement_timeout, a lock_timeout, or a connection lost
    # mid-request (OperationalError) are all worth retrying, and none is the client's fault.
    for kind in (DatabaseUnavailable, StatementTimeout, OperationalError):
        app.add_exception_handler(kind, unavailable)
    app.add_exception_handler(AccountNotFound, not_found)
    app.add_exception_handler(InsufficientFunds, conflict)
    app.add_exception_handler(IdempotencyConflict, conflict)
    app.add_exception_handler(InvalidRequest, invalid)
