"""Driver errors are classified by SQLSTATE, including one that ended the session underneath."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import psycopg
import pytest

from uow import ConnectionLost, DatabaseUnavailable, ServerFull, ServerReadOnly, Settings
from uow._engine.classify import ended_before_commit, translate
from uow._engine.servers import ServerMarks


@dataclass
class Context:
    """The attributes of SQLAlchemy's ExceptionContext that translate() reads."""

    original_exception: BaseException
    connection: Any = field(default_factory=object)  # not None: the connection was open
    is_pre_ping: bool = False
    is_disconnect: bool = False
    invalidate_pool_on_disconnect: bool = True


def raised_while_handling(inner: BaseException, outer: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except type(inner):
            raise outer  # noqa: B904 - the context is what is tested
    except type(outer) as exc:
        return exc


SETTINGS = Settings(url="postgresql://u:pw@127.0.0.1/db")


def test_a_pipeline_error_over_a_terminated_backend_is_a_lost_connection() -> None:
    """OperationalError('cannot exit pipeline mode...') over 57P01 is ConnectionLost (retried)."""
    shutdown = psycopg.errors.AdminShutdown("terminating connection due to administrator command")
    busy = psycopg.OperationalError("cannot exit pipeline mode while busy")
    original = raised_while_handling(shutdown, busy)
    assert original.__context__ is shutdown
    context = Context(original)
    assert isinstance(translate(context, SETTINGS), ConnectionLost)  # type: ignore[arg-type]
    assert context.is_disconnect


@pytest.mark.parametrize(
    "inner",
    [psycopg.errors.UniqueViolation("duplicate key"), ValueError("not a driver error")],
)
def test_other_errors_underneath_do_not_make_a_lost_connection(inner: BaseException) -> None:
    """Only a session-ending SQLSTATE underneath counts; others leave the error as it is."""
    original = raised_while_handling(inner, psycopg.OperationalError("something else"))
    context = Context(original)
    assert translate(context, SETTINGS) is None  # type: ignore[arg-type]
    assert not context.is_disconnect


@pytest.mark.parametrize(
    "fatal",
    [
        "sorry, too many clients already",
        "remaining connection slots are reserved for non-replication superuser connections",
        "remaining connection slots are reserved for roles with the SUPERUSER attribute",
        'too many connections for role "app"',
    ],
)
def test_a_login_refused_for_lack_of_a_slot_is_server_full(fatal: str) -> None:
    """libpq gives no SQLSTATE at login: PostgreSQL's 53300 texts (9.6-18) make ServerFull."""
    refused = psycopg.OperationalError(
        f'connection to server at "h", port 1 failed: FATAL:  {fatal}'
    )
    assert isinstance(translate(Context(refused, connection=None), SETTINGS), ServerFull)  # type: ignore[arg-type]


def test_other_login_failures_stay_database_unavailable() -> None:
    """A refused TCP connection or a failed login is DatabaseUnavailable, not ServerFull."""
    for text in ("Connection refused", 'FATAL:  password authentication failed for user "u"'):
        error = translate(Context(psycopg.OperationalError(text), connection=None), SETTINGS)  # type: ignore[arg-type]
        assert type(error) is DatabaseUnavailable


def on_connection(error: BaseException, *, read_only: bool | None) -> Context:
    """A context whose connection is psycopg's with this ``read_only`` (as SQLAlchemy sets it)."""
    driver = SimpleNamespace(read_only=read_only, info=SimpleNamespace(host="h1", port=5433))
    return Context(
        error, connection=SimpleNamespace(connection=SimpleNamespace(driver_connection=driver))
    )


READ_ONLY = psycopg.errors.ReadOnlySqlTransaction(
    "cannot execute INSERT in a read-only transaction"
)


@pytest.mark.parametrize("read_only", [None, False])
def test_25006_in_a_unit_that_may_write_is_server_read_only(read_only: bool | None) -> None:
    """25006 outside BEGIN READ ONLY: ServerReadOnly; connection discarded, server marked."""
    context = on_connection(READ_ONLY, read_only=read_only)
    marks = ServerMarks()
    error = translate(context, SETTINGS, None, marks)  # type: ignore[arg-type]
    assert isinstance(error, ServerReadOnly)
    assert "h1:5433" in str(error) and "SQLSTATE 25006" in str(error)
    assert context.is_disconnect and not context.invalidate_pool_on_disconnect
    assert ("h1", "5433") in marks._marked


def test_25006_under_a_pipeline_error_is_server_read_only() -> None:
    """OperationalError('cannot exit pipeline mode...') over 25006 is ServerReadOnly too."""
    original = raised_while_handling(READ_ONLY, psycopg.OperationalError("cannot exit pipeline"))
    context = on_connection(original, read_only=None)
    assert isinstance(translate(context, SETTINGS), ServerReadOnly)  # type: ignore[arg-type]


def test_25006_in_a_readonly_unit_stays_sqlalchemys_error() -> None:
    """A write in a unit declared readonly (BEGIN READ ONLY) is the caller's bug: untouched."""
    context = on_connection(READ_ONLY, read_only=True)
    marks = ServerMarks()
    assert translate(context, SETTINGS, None, marks) is None  # type: ignore[arg-type]
    assert not context.is_disconnect
    assert not marks._marked


def test_25p03_is_a_lost_connection_that_names_the_timeout() -> None:
    """25P03 (idle in transaction too long) is ConnectionLost, naming the setting."""
    ended = psycopg.errors.IdleInTransactionSessionTimeout(
        "terminating connection due to idle-in-transaction timeout"
    )
    context = Context(ended)
    error = translate(context, SETTINGS)  # type: ignore[arg-type]
    assert isinstance(error, ConnectionLost)
    assert "UOW_IDLE_IN_TRANSACTION_TIMEOUT" in str(error)
    assert context.is_disconnect
    error.__cause__ = ended  # as SQLAlchemy raises it
    assert ended_before_commit(error)
    other = ConnectionLost("lost")
    other.__cause__ = psycopg.errors.AdminShutdown("terminating connection")
    assert not ended_before_commit(other)


def test_libpq_refusing_a_read_only_host_at_login_is_server_read_only() -> None:
    """target_session_attrs refusals (libpq's, no SQLSTATE) are ServerReadOnly, not an outage."""
    for text in ("session is read-only", "server is in hot standby mode"):
        refused = psycopg.OperationalError(
            f'connection failed: connection to server at "h", port 1 failed: {text}'
        )
        error = translate(Context(refused, connection=None), SETTINGS)  # type: ignore[arg-type]
        assert isinstance(error, ServerReadOnly), text
