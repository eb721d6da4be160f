"""Turn driver errors into uow's exceptions, by SQLSTATE, in SQLAlchemy's handle_error hook."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import psycopg
from sqlalchemy.engine import ExceptionContext, make_url

from .._errors import (
    ConnectionLost,
    DatabaseUnavailable,
    DeadlockDetected,
    SerializationFailure,
    ServerFull,
    ServerReadOnly,
    StatementTimeout,
)
from .._settings import Settings, secret_parameters
from .budget import Budget
from .read_only import READ_ONLY_SQLSTATE, server_read_only

if TYPE_CHECKING:
    from .servers import ServerMarks

__all__ = [
    "ended_before_commit",
    "first_line",
    "hide_secrets",
    "read_only_at_login",
    "server_full",
    "translate",
]

# A login refused for lack of a slot is SQLSTATE 53300, but libpq does not expose the
# SQLSTATE of an error received while logging in (psycopg's ``sqlstate`` is None there;
# checked with PostgreSQL 15 and 18), so at login it is known only by the server's text:
# libpq's "FATAL:  " and PostgreSQL's messages for 53300 since 9.6 ("reserved for
# non-replication superuser connections" until 15, "for roles with the SUPERUSER
# attribute" or "with privileges of pg_use_reserved_connections" since 16). A server
# whose lc_messages is not English reports a full server as DatabaseUnavailable, as before.
_SERVER_FULL = (
    "FATAL:  sorry, too many clients already",
    "FATAL:  remaining connection slots are reserved",
    "FATAL:  too many connections for role",
    "FATAL:  too many connections for database",
)

# libpq's own refusals of a server for target_session_attrs=read-write or primary: its
# checks, not a server error, so no SQLSTATE; English unless the client's locale
# translates libpq. With several hosts the message lists each host's failure.
_READ_ONLY_AT_LOGIN = ("failed: session is read-only", "failed: server is in hot standby mode")

# Errors after which the session is gone: connection exceptions (class 08), the
# server shutting down or the backend terminated (57P01-57P03), a session ended by
# idle_in_transaction_session_timeout (25P03) or idle_session_timeout (57P05).
_SESSION_ENDED = frozenset({"57P01", "57P02", "57P03", "57P05", "25P03"})


def ends_session(sqlstate: str | None) -> bool:
    """Tell whether an error with this SQLSTATE means the server ended the session."""
    return sqlstate is not None and (sqlstate.startswith("08") or sqlstate in _SESSION_ENDED)


def ended_before_commit(lost: BaseException) -> bool:
    """Tell whether a connection lost at COMMIT was ended before the server read COMMIT.

    ``lost`` is the :class:`~uow.ConnectionLost` raised by the commit. SQLSTATE 25P03:
    idle_in_transaction_session_timeout ended the session while it waited, idle, for the
    COMMIT, so the server rolled the transaction back.
    """
    cause = lost.__cause__
    return cause is not None and _sqlstate(cause) == "25P03"


def _sqlstate(exc: BaseException) -> str | None:
    """The error's SQLSTATE, or the one of a session-ending (or 25006) error it was raised while
    handling.

    A backend terminated in the middle of a pipeline (psycopg's executemany, the ORM's
    batched flush) surfaces as ``OperationalError: cannot exit pipeline mode while busy``,
    without a SQLSTATE; the server's own error (57P01) is its ``__context__``.
    """
    sqlstate: str | None = getattr(exc, "sqlstate", None)
    if sqlstate is not None or not isinstance(exc, psycopg.OperationalError):
        return sqlstate
    seen: set[int] = set()
    cause = exc.__cause__ or exc.__context__
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        found = getattr(cause, "sqlstate", None)
        if isinstance(cause, psycopg.Error) and (
            ends_session(found) or found == READ_ONLY_SQLSTATE
        ):
            return str(found)
        cause = cause.__cause__ or cause.__context__
    return None


def server_full(exc: BaseException) -> bool:
    """Tell whether the server refused a connection for lack of a slot (SQLSTATE 53300)."""
    if getattr(exc, "sqlstate", None) == "53300":
        return True
    text = str(exc)
    return isinstance(exc, psycopg.OperationalError) and any(t in text for t in _SERVER_FULL)


def read_only_at_login(exc: BaseException) -> bool:
    """Tell whether libpq refused a server (one of the hosts at least) as read-only."""
    text = str(exc)
    return isinstance(exc, psycopg.OperationalError) and any(t in text for t in _READ_ONLY_AT_LOGIN)


def _server_full_error(
    original: BaseException, settings: Settings, budget: Budget | None
) -> ServerFull:
    per_process = settings.pool_size + settings.max_overflow
    if budget is None:
        server = "its max_connections"
    else:
        server = (
            f"max_connections={budget.max_connections} with {budget.reserved} reserved for "
            "superusers"
        )
    return ServerFull(
        f"{settings.masked_url} is full: {hide_secrets(first_line(original), settings)} "
        f"(SQLSTATE 53300). The server is up but all of {server} are in use; this process "
        f"may open pool_size + max_overflow = {settings.pool_size} + {settings.max_overflow}"
        f" = {per_process} connections, x UOW_PROCESSES={settings.processes} = "
        f"{per_process * settings.processes}. Retried by run_transaction; to fix, lower "
        "UOW_POOL_SIZE or UOW_MAX_OVERFLOW, run fewer processes, put PgBouncer in front, or "
        "raise max_connections, and check which other clients hold connections."
    )


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (psycopg's carry DETAIL/HINT lines)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def translate(  # noqa: PLR0911 - one return per kind of error reads best
    context: ExceptionContext,
    settings: Settings,
    budget: Budget | None = None,
    marks: ServerMarks | None = None,
) -> BaseException | None:
    """Map a driver error to the most specific uow exception, or None to keep SQLAlchemy's.

    ``budget`` is the server's numbers when uow has read them (for a full server's message:
    no query is sent on that path). Also marks errors that ended the session as
    disconnects, so SQLAlchemy discards the connection instead of returning it to the pool,
    and a server that refused a write to a transaction that may write in ``marks``.
    """
    original = context.original_exception
    if context.is_pre_ping or not isinstance(original, Exception):
        # A pre-ping's stale connection SQLAlchemy replaces itself. A cancelled task,
        # a timeout or Ctrl-C (CancelledError, KeyboardInterrupt) must stay what it is:
        # SQLAlchemy already discards the interrupted connection.
        return None
    sqlstate = _sqlstate(original)
    if ends_session(sqlstate):
        context.is_disconnect = True
    if context.connection is None and server_full(original):
        return _server_full_error(original, settings, budget)
    if context.connection is None and read_only_at_login(original):
        return ServerReadOnly(
            f"no server of {settings.masked_url} could take writes: "
            f"{hide_secrets(first_line(original), settings)} (target_session_attrs refused "
            "a read-only one). Nothing was written, and run_transaction retries: during a "
            "failover a new primary is usually writable within seconds. If it lasts, check "
            "that the URL lists the writable host and the servers' "
            "default_transaction_read_only."
        )
    if context.connection is None and isinstance(original, psycopg.OperationalError):
        return DatabaseUnavailable(
            f"could not connect to {settings.masked_url} "
            f"(connect_timeout={settings.connect_timeout:g}s): "
            f"{hide_secrets(first_line(original), settings)}. "
            "Check that the server is running and reachable, and the user and password."
        )
    if sqlstate == READ_ONLY_SQLSTATE and context.connection is not None:
        read_only = _read_only_server(context, settings, marks)
        if read_only is not None:
            return read_only
    if isinstance(original, psycopg.errors.QueryCanceled):
        return StatementTimeout(
            f"the server cancelled a statement: {first_line(original)}. The limit is the "
            "unit of work's timeout= when one was given, else UOW_STATEMENT_TIMEOUT="
            f"{settings.statement_timeout:g}s. Make the statement cheaper (an index, a smaller "
            "batch) or give this unit of work a larger timeout."
        )
    if isinstance(original, psycopg.errors.SerializationFailure):
        return SerializationFailure(
            f"{first_line(original)} (SQLSTATE 40001): the transaction was rolled back; "
            "run it again, for example with @uow.transactional(retries=...)"
        )
    if isinstance(original, psycopg.errors.DeadlockDetected):
        return DeadlockDetected(
            f"{first_line(original)} (SQLSTATE 40P01): the transaction was rolled back; run it "
            "again, and lock rows in a consistent order (e.g. by primary key) to avoid it"
        )
    if sqlstate == "25P03":
        return ConnectionLost(
            f"{first_line(original)} (SQLSTATE 25P03): the unit of work held its transaction "
            "open and idle for longer than idle_in_transaction_session_timeout (uow's "
            f"UOW_IDLE_IN_TRANSACTION_TIMEOUT={settings.idle_in_transaction_timeout:g}s unless "
            "the URL or server sets it), so the server rolled it back and ended the session: "
            "nothing was written, and running it again is safe. Do slow work (HTTP calls, "
            "sleeps) outside the unit of work, or raise the timeout."
        )
    if context.is_disconnect:
        return ConnectionLost(
            f"the connection to {settings.masked_url} was lost: {first_line(original)}. "
            "The server rolled the transaction back and the connection was discarded; "
            "running the unit of work again is safe."
        )
    return None


def _read_only_server(
    context: ExceptionContext, settings: Settings, marks: ServerMarks | None
) -> ServerReadOnly | None:
    """25006 in a transaction that may write: the server is read-only; None in a read-only one.

    A unit declared ``readonly=True`` runs ``BEGIN READ ONLY`` (psycopg's ``read_only``,
    set by SQLAlchemy for ``postgresql_readonly``): a write there is the caller's bug, and
    stays SQLAlchemy's error.
    """
    assert context.connection is not None
    driver = context.connection.connection.driver_connection
    if driver is None or driver.read_only:
        return None
    # Discarded like a dead connection, but only this server's connections are replaced
    # (by marks), not the whole pool: with several hosts, the others' are fine.
    context.is_disconnect = True
    context.invalidate_pool_on_disconnect = False
    if marks is not None:
        marks.mark_connection(driver, f"SQLSTATE {READ_ONLY_SQLSTATE}")
    return server_read_only(
        settings, driver, f"{first_line(context.original_exception)} (SQLSTATE 25006)"
    )


def _secrets(settings: Settings) -> Iterator[str]:
    for url in (settings.url, *settings.replica_urls):
        if password := make_url(url).password:
            yield str(password)
    connect_args = settings.engine_options.get("connect_args") or {}
    for key in secret_parameters().intersection(connect_args):
        yield str(connect_args[key])


def hide_secrets(text: str, settings: Settings) -> str:
    """``text`` with every password of ``settings`` (URLs, ``connect_args``) replaced by ***."""
    for secret in sorted(set(_secrets(settings)), key=len, reverse=True):
        if secret:
            text = text.replace(secret, "***")
    return text
