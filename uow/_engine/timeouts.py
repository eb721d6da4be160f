"""Server-side timeouts: how they reach the server, directly or through PgBouncer.

Direct connections carry them in the startup packet (``options=-c ...``), at no round
trip. PgBouncer refuses that startup parameter, and in transaction mode a session-level
``SET`` would leak to whichever client gets the server connection next; so behind
PgBouncer they are set once per connection (session mode) or with ``set_config(...,
true)``, the function form of ``SET LOCAL``, at the start of each transaction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, event
from sqlalchemy.orm import Session, SessionTransaction
from sqlalchemy.pool import ConnectionPoolEntry

from .watchdog import GRACE, LIMIT_KEY

if TYPE_CHECKING:
    from .._settings import Settings

__all__ = [
    "TIMEOUT_KEY",
    "TIMEOUT_PARAMETERS",
    "LocalTimeouts",
    "install_session_timeouts",
    "server_timeouts",
    "startup_timeouts",
]

TIMEOUT_KEY = "uow_statement_timeout"
"""``session.info`` key of a unit of work's own statement timeout, in seconds."""

TIMEOUT_PARAMETERS = {
    "statement_timeout": "statement_timeout",
    "lock_timeout": "lock_timeout",
    "idle_in_transaction_timeout": "idle_in_transaction_session_timeout",
}
"""uow's timeout settings and the server parameter each one sets."""


def server_timeouts(settings: Settings) -> dict[str, str]:
    """The server settings uow manages, by server name; disabled (0) ones are left out."""
    return {
        parameter: _ms(seconds)
        for setting, parameter in TIMEOUT_PARAMETERS.items()
        if (seconds := getattr(settings, setting))
    }


def startup_timeouts(settings: Settings) -> dict[str, str]:
    """What uow adds to libpq's ``options`` on a direct connection (nothing behind PgBouncer).

    The URL's own ``options`` come first and win (see :mod:`uow._conninfo`).
    """
    return server_timeouts(settings) if settings.pgbouncer == "off" else {}


def install_session_timeouts(engine: Engine, settings: Settings) -> None:
    """Behind PgBouncer in session mode: set the timeouts once on each new connection."""
    values = server_timeouts(settings)
    if settings.pgbouncer != "session" or not values:
        return
    sql, params = _set_config(values, local=False)

    @event.listens_for(engine, "connect")
    def _set_timeouts(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        # Autocommit for this one statement: one round trip instead of BEGIN, SET, COMMIT.
        dbapi_connection.autocommit = True
        cursor = dbapi_connection.cursor()  # psycopg's, or SQLAlchemy's asyncio adapter
        try:
            cursor.execute(sql, params)
        finally:
            cursor.close()
            dbapi_connection.autocommit = False


class LocalTimeouts:
    """A session ``after_begin`` listener that sets timeouts for the new transaction.

    It sets a unit of work's own ``timeout=`` (given in ``session.info``), and behind
    PgBouncer in transaction mode every managed timeout too: one statement, one round trip,
    and none at all for a unit with nothing to set.
    """

    def __init__(self, settings: Settings) -> None:
        self._always = server_timeouts(settings) if settings.pgbouncer == "transaction" else {}
        # Built once: this runs at the start of every transaction behind PgBouncer.
        self._prepared = _set_config(self._always, local=True) if self._always else None

    def __call__(
        self, session: Session, transaction: SessionTransaction, connection: Connection
    ) -> None:
        timeout = session.info.get(TIMEOUT_KEY)
        if timeout is not None:
            # The client-side deadline follows the unit's own limit (see watchdog).
            connection.info[LIMIT_KEY] = timeout + GRACE
            values = {**self._always, "statement_timeout": _ms(timeout)}
            statement, params = _set_config(values, local=True)
        elif self._prepared is not None:
            statement, params = self._prepared
        else:
            return
        # exec_driver_sql skips SQLAlchemy's compiler (a third of this call's CPU cost) but
        # keeps its error handling: a dead connection still becomes ConnectionLost.
        connection.exec_driver_sql(statement, params)


def _ms(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"


def _set_config(values: dict[str, str], *, local: bool) -> tuple[str, dict[str, Any]]:
    """``SELECT set_config(...), ...`` with psycopg's placeholders, and its parameters."""
    params: dict[str, Any] = {"local": local}
    calls = []
    for i, (name, value) in enumerate(values.items()):
        params[f"n{i}"], params[f"v{i}"] = name, value
        calls.append(f"set_config(%(n{i})s, %(v{i})s, %(local)s)")
    return f"SELECT {', '.join(calls)}", params
