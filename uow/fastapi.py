"""FastAPI integration: ``pip install 'uow[fastapi]'``.

Three pieces, each usable alone::

    from typing import Annotated
    from fastapi import Depends, FastAPI
    import uow, uow.fastapi

    db = uow.Database()
    app = FastAPI(lifespan=uow.fastapi.lifespan(db))
    uow.fastapi.install_exception_handlers(app)
    Unit = Annotated[uow.UnitOfWork, Depends(uow.fastapi.unit_of_work(database=db))]

    @app.post("/things")
    def add_thing(unit: Unit) -> dict[str, int]:
        with unit:                       # checkout, commit and release happen here
            ...

- :func:`lifespan` checks the connection budget when the server starts (a budget that
  does not fit stops the worker with the numbers and the fix, instead of serving 500s)
  and closes the pools when it stops.
- :func:`install_exception_handlers` maps uow's errors to short JSON answers: 503 with
  ``Retry-After`` for an exhausted pool, an unreachable or full server, a lost
  connection or a conflict worth retrying; 503 saying that the outcome is unknown for
  :class:`~uow.CommitOutcomeUnknown`; 504 for a statement timeout; 500 for a
  configuration error, with a log line that says what to fix. Details go to the
  ``uow.fastapi`` logger, never to the client.
- :func:`unit_of_work` gives each request its own unit of work, for sync endpoints
  (:class:`~uow.UnitOfWork`) and async ones (:class:`~uow.AsyncUnitOfWork`).

Why the endpoint enters the unit itself: a sync dependency with ``yield`` runs its
setup in one threadpool call and the endpoint in another (fastapi/fastapi#3205). When
every one of the threadpool's 40 threads waits in a dependency for a pool connection,
the endpoints holding the connections wait for a thread, and nothing moves. The
dependency here is an ``async def`` that only builds the unit: no thread, no I/O. The
endpoint's ``with unit:`` then checks a connection out, commits and returns it inside the
endpoint's own threadpool call (or task), so a thread waiting for a connection never
holds one, a full pool turns into :class:`~uow.PoolExhausted` (503) after
``pool_timeout``, and a failed COMMIT is answered before any response is sent.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar, overload

try:
    import anyio.to_thread
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from starlette.types import ExceptionHandler
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    raise ImportError("uow.fastapi needs FastAPI: pip install 'uow[fastapi]'") from exc

from sqlalchemy.exc import OperationalError

from ._async import AsyncUnitOfWork
from ._database import Database
from ._default import get_database
from ._errors import (
    CommitOutcomeUnknown,
    ConfigurationError,
    ConnectionLost,
    DatabaseUnavailable,
    PoolExhausted,
    ServerFull,
    ServerReadOnly,
    StatementTimeout,
    TransientError,
)
from ._unit_of_work import UnitOfWork

__all__ = [
    "RETRY_AFTER",
    "exception_handlers",
    "install_exception_handlers",
    "lifespan",
    "unit_of_work",
]

logger = logging.getLogger("uow.fastapi")

RETRY_AFTER = 1
"""Default ``Retry-After`` seconds: a pool frees up, and a restarted server is back, within one."""

_STATE = "uow_database"  # the attribute of app.state that holds the lifespan's database

U = TypeVar("U", bound=UnitOfWork | AsyncUnitOfWork)

# What each error answers: (status, body, Retry-After?, log level). Starlette picks the
# handler of the most specific class in an exception's MRO, so ConnectionLost wins over
# TransientError. A new error class gets its line here.
_ANSWERS: dict[type[Exception], tuple[int, str, bool, int]] = {
    PoolExhausted: (503, "the service is overloaded; retry shortly", True, logging.WARNING),
    ServerFull: (
        503,
        "the database has no connection slot free; retry shortly",
        True,
        logging.WARNING,
    ),
    ServerReadOnly: (
        503,
        "the database cannot take writes right now (failing over?); nothing was saved; "
        "retry shortly",
        True,
        logging.WARNING,
    ),
    DatabaseUnavailable: (503, "the database is unavailable; retry later", True, logging.ERROR),
    TransientError: (
        503,
        "the request conflicted with another and was rolled back; retry it",
        True,
        logging.WARNING,
    ),
    ConnectionLost: (
        503,
        "the connection to the database was lost before commit; nothing was saved; retry it",
        True,
        logging.WARNING,
    ),
    CommitOutcomeUnknown: (
        503,
        "the connection to the database was lost during commit: the outcome is unknown; "
        "retry with the same idempotency key",
        True,
        logging.ERROR,
    ),
    # A connection error uow did not classify (lock_timeout, a server shutting down...):
    # the server's trouble, not the client's, and worth a retry.
    OperationalError: (503, "the database is unavailable; retry later", True, logging.ERROR),
    StatementTimeout: (504, "the database took too long to answer", False, logging.WARNING),
    ConfigurationError: (500, "the service is misconfigured", False, logging.ERROR),
}


def _handler(answer: tuple[int, str, bool, int], retry_after: int) -> ExceptionHandler:
    code, text, retry, level = answer
    headers = {"Retry-After": str(retry_after)} if retry else None

    async def handle(request: Request, exc: Exception) -> JSONResponse:
        # uow's messages name pool sizes, settings and the fix: for the operator's log,
        # not for the client. No traceback: the message says what happened.
        logger.log(
            level, "%s %s: %s: %s", request.method, request.url.path, type(exc).__name__, exc
        )
        return JSONResponse({"detail": text}, status_code=code, headers=headers)

    return handle


def exception_handlers(
    *, retry_after: int = RETRY_AFTER
) -> dict[type[Exception], ExceptionHandler]:
    """uow's errors mapped to handlers, for ``FastAPI(exception_handlers=...)``.

    Args:
        retry_after: seconds sent in ``Retry-After`` with the 503s worth retrying.

    Returns:
        A new dict; add your own handlers to it or override some of these.
    """
    if isinstance(retry_after, bool) or not isinstance(retry_after, int) or retry_after < 0:
        raise ValueError(f"retry_after must be a whole number of seconds >= 0, not {retry_after!r}")
    return {kind: _handler(answer, retry_after) for kind, answer in _ANSWERS.items()}


def install_exception_handlers(app: FastAPI, *, retry_after: int = RETRY_AFTER) -> None:
    """Add :func:`exception_handlers` to ``app``; handlers it already has for them are replaced."""
    for kind, handler in exception_handlers(retry_after=retry_after).items():
        app.add_exception_handler(kind, handler)


def lifespan(
    database: Database | None = None, *, check: bool | None = None
) -> Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]:
    """A lifespan for ``FastAPI(lifespan=...)``: check the budget at startup, close at shutdown.

    At startup, :meth:`uow.Database.check` runs once (in a worker thread). A budget that
    does not fit raises :class:`~uow.ConfigurationError`, so the server refuses to start
    with the numbers and the fix; an unreachable server is only logged, and requests
    answer 503 until it is back. At shutdown the asyncio pool's connections are closed
    in the event loop they belong to, then the sync pool's.

    An application with a lifespan of its own enters this one inside it:
    ``async with uow.fastapi.lifespan(db)(app): yield``.

    Args:
        database: the database to check and close, and the one :func:`unit_of_work`
            dependencies use unless given their own; defaults to ``uow.get_database()``.
        check: True checks, False does not; by default it checks when uow's own check
            is on (``check_budget``, and ``pgbouncer`` off, as PgBouncer's pool is what
            the server sees).
    """

    @contextlib.asynccontextmanager
    async def run(app: FastAPI) -> AsyncIterator[None]:
        # unit_of_work() dependencies without a database= of their own use this one.
        setattr(app.state, _STATE, database)
        db = database if database is not None else get_database()
        # The condition of uow's check on the first connection (uow/_engine/build.py).
        settings = db.settings
        if check if check is not None else settings.check_budget and settings.pgbouncer == "off":
            try:
                await anyio.to_thread.run_sync(db.check)
            except ConfigurationError as exc:
                logger.critical("refusing to start: %s", exc)
                raise
            except (DatabaseUnavailable, OperationalError) as exc:
                logger.error("starting without a budget check: %s", exc)
        try:
            yield
        finally:
            await db.dispose_async()
            await anyio.to_thread.run_sync(db.dispose)

    return run


@overload
def unit_of_work(
    *, database: Database | None = None, **options: Any
) -> Callable[[Request], Awaitable[UnitOfWork]]: ...
@overload
def unit_of_work(
    factory: Callable[..., U], /, *, database: Database | None = None, **options: Any
) -> Callable[[Request], Awaitable[U]]: ...
def unit_of_work(
    factory: Callable[..., Any] = UnitOfWork,
    /,
    *,
    database: Database | None = None,
    **options: Any,
) -> Callable[[Request], Awaitable[Any]]:
    """A dependency that gives each request a new unit of work, for the endpoint to enter.

    Use ``Depends(unit_of_work())`` in a sync endpoint (``with unit:``) and
    ``Depends(unit_of_work(uow.AsyncUnitOfWork))`` in an async one (``async with unit:``).
    The dependency is an ``async def`` that only builds the unit (no thread, no I/O);
    the connection is checked out when the endpoint enters it and returned when the
    block ends, in the endpoint's own thread or task, which is what keeps a full
    threadpool from deadlocking (see the module's docstring).

    Args:
        factory: the unit's class (``UnitOfWork``, ``AsyncUnitOfWork`` or a subclass).
        database: the unit's database; defaults to the one given to the app's
            :func:`lifespan`, else ``uow.get_database()`` when the unit is entered. So a
            module-level dependency serves an app built by a ``create_app(database)``.
        **options: the unit's options (``readonly``, ``isolation``, ``timeout``, ``replica``).

    Returns:
        The dependency, for ``fastapi.Depends``.
    """
    factory(database, **options)  # a wrong option fails here, at import, not per request

    async def new_unit(request: Request) -> Any:
        db = database if database is not None else getattr(request.app.state, _STATE, None)
        return factory(db, **options)

    return new_unit
