"""Which server each pooled connection is on, and leaving a server that went bad.

With several hosts in a URL (or a proxy's failover) one pool can hold connections to
more than one server. When one server turns out to be read-only or stops answering,
its idle connections are no better: :meth:`ServerMarks.mark` records the moment, and a
connection opened to that server before it is replaced at its next checkout, before
any caller uses it. Connections to the other servers, and ones opened afterwards, are
kept. Checking costs one test of an empty dict while no server is marked.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

__all__ = ["LeftServer", "ServerMarks", "marks_of", "server_of"]

logger = logging.getLogger("uow")

_SERVER = "uow_server"  # record.info: (host, port) the connection reached
_OPENED = "uow_opened"  # record.info: time.monotonic() when it was opened
_MARKS = "uow_marks"  # record.info: the ServerMarks, for listeners given only a connection

Server = tuple[str, str]
_QUIET = 10.0  # seconds without a mark after which a new one is logged as a new incident


class LeftServer(DisconnectionError):
    """A pooled connection replaced at checkout: its server was marked read-only or hung."""


def _driver(dbapi_connection: Any) -> Any:
    # The asyncio driver's connection is wrapped in SQLAlchemy's adapter.
    return getattr(dbapi_connection, "driver_connection", dbapi_connection)


def server_of(dbapi_connection: Any) -> Server:
    """``(host, port)`` the connection actually reached (one of a multi-host URL's)."""
    info = _driver(dbapi_connection).info
    return (str(info.host), str(info.port))


class ServerMarks:
    """Servers an engine's pool should stop using connections to, and since when."""

    def __init__(self) -> None:
        self._marked: dict[Server, float] = {}
        self._lock = threading.Lock()

    def mark(self, server: Server, why: str) -> None:
        """Replace every connection to ``server`` opened before now at its next checkout."""
        now = time.monotonic()
        with self._lock:
            before = self._marked.get(server)
            self._marked[server] = now
        # Once per incident: every unit that meets the bad server marks it again.
        if before is None or now - before > _QUIET:
            logger.warning(
                "leaving server %s:%s (%s): its pooled connections will be replaced",
                server[0],
                server[1],
                why,
            )

    def mark_connection(self, dbapi_connection: Any, why: str) -> None:
        """:meth:`mark` the server ``dbapi_connection`` is on."""
        try:
            server = server_of(dbapi_connection)
        except Exception:  # noqa: BLE001 - a closed connection has no host to tell
            return
        self.mark(server, why)

    def stale(self, record: ConnectionPoolEntry) -> bool:
        """True if ``record``'s server was marked after the connection was opened."""
        if not self._marked:
            return False
        marked = self._marked.get(record.info.get(_SERVER))  # type: ignore[arg-type]
        return marked is not None and record.info.get(_OPENED, 0.0) <= marked

    def install(self, engine: Engine) -> None:
        """Note each new connection's server; replace connections to marked ones at checkout."""

        @event.listens_for(engine, "connect")
        def _opened(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
            record.info[_OPENED] = time.monotonic()
            record.info[_MARKS] = self
            try:
                record.info[_SERVER] = server_of(dbapi_connection)
            except Exception:  # noqa: BLE001 - a driver without conninfo: never marked
                record.info.pop(_SERVER, None)

        @event.listens_for(engine, "checkout")
        def _check(dbapi_connection: Any, record: ConnectionPoolEntry, proxy: Any) -> None:
            # Raising DisconnectionError is SQLAlchemy's documented way to have the pool
            # replace a connection at checkout.
            if self._marked and self.stale(record):  # one dict test while none is marked
                raise LeftServer("the connection's server was left (read-only or hung)")


def marks_of(pooled: PoolProxiedConnection) -> ServerMarks | None:
    """The :class:`ServerMarks` of the engine whose pool ``pooled`` came from, if installed."""
    return pooled.info.get(_MARKS)
