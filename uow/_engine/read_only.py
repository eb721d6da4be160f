"""Servers that cannot take writes: left at once instead of failing every write until recycle.

A primary made read-only (``default_transaction_read_only``), a standby, or a leader a
proxy announced before its promotion finished all accept connections and fail writes
with SQLSTATE 25006. Two ways of noticing it, both ending the same way (the connection
discarded, the server marked so its idle connections are replaced at checkout, and
:class:`~uow.ServerReadOnly` raised, which ``run_transaction`` retries):

- a unit that may write meets 25006 (:func:`uow._engine.classify.translate`);
- before such a unit sends anything, the server's last report says it is read-only:
  PostgreSQL 14+ reports ``in_hot_standby`` and ``default_transaction_read_only`` as
  ParameterStatus, which libpq keeps, so reading them costs no round trip. An idle
  connection hears of a change only with the answer to its next statement (measured on
  PostgreSQL 15 and 18: after ``ALTER SYSTEM`` and ``pg_reload_conf()`` its first write
  still fails with 25006), so the report catches new connections and ones a read-only
  unit used since, and 25006 catches the first write on the others.

Units declared ``readonly=True`` are not checked: they can run on such a server.

A connection refused by the report is always discarded (its report may be stale: a
promotion that finished is heard only after a statement), but its server is marked only
if the connection was writable when it was opened: one opened already read-only (a single
read-only host, or no ``target_session_attrs``) says nothing new, and marking again would
replace the connections read-only units are using for no gain.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, event
from sqlalchemy.orm import Session, SessionTransaction
from sqlalchemy.pool import ConnectionPoolEntry

from .._errors import ServerReadOnly
from .servers import marks_of, server_of

if TYPE_CHECKING:
    from .._settings import Settings

__all__ = [
    "READ_ONLY_SQLSTATE",
    "WritableCheck",
    "install_read_only_notes",
    "read_only_report",
    "server_read_only",
]

READ_ONLY_SQLSTATE = "25006"
"""``read_only_sql_transaction``: a write in a read-only transaction."""

_BORN_READ_ONLY = "uow_born_read_only"  # record.info: the server was read-only at connect
_PGCONN = "uow_pgconn"  # record.info: the driver's libpq connection (one lookup per unit)


def read_only_report(pgconn: Any) -> str | None:
    """What the server last reported that forbids writes (e.g. ``in_hot_standby=on``), or None.

    ``pgconn`` is psycopg's libpq connection (``connection.pgconn``).
    """
    status = pgconn.parameter_status
    # Servers before 14 report neither (None): nothing is known, 25006 still catches it.
    if status(b"in_hot_standby") == b"on":
        return "in_hot_standby=on"
    if status(b"default_transaction_read_only") == b"on":
        return "default_transaction_read_only=on"
    return None


def install_read_only_notes(engine: Engine) -> None:
    """Keep each new connection's libpq handle, and whether it was read-only from the start."""

    @event.listens_for(engine, "connect")
    def _note(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        driver = record.driver_connection
        if driver is None:  # never, once connected; typed Optional for invalidated records
            return
        pgconn = record.info[_PGCONN] = driver.pgconn
        record.info[_BORN_READ_ONLY] = read_only_report(pgconn) is not None


def server_read_only(settings: Settings, driver_connection: Any, what: str) -> ServerReadOnly:
    """The error for a unit that may write on a server that cannot take writes."""
    try:
        host, port = server_of(driver_connection)
        where = f"the server {host}:{port} of {settings.masked_url}"
    except Exception:  # noqa: BLE001 - a closed connection has no host to tell
        where = settings.masked_url
    return ServerReadOnly(
        f"{where} cannot take writes: {what}. Nothing was written; the connection was "
        "discarded with that server's other pooled connections, and run_transaction retries "
        "the unit. If it lasts, check: with several hosts in the URL, "
        "target_session_attrs=read-write (without it libpq may pick a standby); the "
        "server's default_transaction_read_only (ALTER SYSTEM, DATABASE or ROLE); a standby, "
        "or a leader still being promoted, behind the proxy or DNS name."
    )


class WritableCheck:
    """A session ``after_begin`` listener for units that may write: refuse a read-only server.

    Installed only on the session factories of units that are not ``readonly``, and first
    among the listeners, so nothing is sent to such a server. Costs a few attribute reads
    and two lookups in libpq's memory per transaction (about 0.6 us).
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def __call__(
        self, session: Session, transaction: SessionTransaction, connection: Connection
    ) -> None:
        if transaction.nested:
            return  # checked when the unit's transaction began
        pooled = connection.connection
        pgconn = pooled.info.get(_PGCONN)
        if pgconn is None:  # a connection from outside uow's engines: not known
            return
        status = pgconn.parameter_status  # read_only_report's tests, inlined: every unit
        if status(b"in_hot_standby") != b"on" and status(b"default_transaction_read_only") != b"on":
            return
        why = read_only_report(pgconn)
        if why is None:
            return
        driver = pooled.driver_connection
        error = server_read_only(self._settings, driver, f"it reports {why}")
        marks = marks_of(pooled)
        if marks is not None and not pooled.info.get(_BORN_READ_ONLY):
            marks.mark_connection(driver, why)
        connection.invalidate()
        raise error
