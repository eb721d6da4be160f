"""Checkout-time liveness: pre-ping's recovery guarantee without a round trip per checkout.

SQLAlchemy's ``pool_pre_ping`` sends a query before every checkout: one round trip
more per unit of work (10-25% of a short transaction's time, measured here). uow
checks instead:

- a connection idle in the pool for ``pool_pre_ping_idle`` seconds or more is pinged,
  as HikariCP and pgx do, since anything may have happened to it (a failover, a
  firewall dropping the idle flow);
- a connection returned more recently is checked without a round trip: a server that
  ended the session (``pg_terminate_backend``, a restart, a timeout) sends a FATAL
  message and closes the socket, so the socket turns readable. A readable socket gets
  a real ping (it might only be a notice); a quiet one is used at once.

A connection that fails either check is replaced before the caller sees it. The ping
is bounded (``bound``): a hung server does not answer it, and it must not block the
checkout for minutes.
"""

from __future__ import annotations

import math
import random
import select
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from psycopg.pq import ConnStatus
from sqlalchemy import Engine, event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.pool import ConnectionPoolEntry

__all__ = ["Recycled", "install_checkout_checks"]

_IDLE_SINCE = "uow_idle_since"
_RECYCLE_AT = "uow_recycle_at"


class Recycled(DisconnectionError):
    """A connection replaced at checkout for its age: deliberate, not a lost connection."""


def install_checkout_checks(
    engine: Engine,
    *,
    pre_ping: bool,
    idle_window: float,
    recycle: float,
    bound: Callable[[ConnectionPoolEntry], AbstractContextManager[None]],
) -> None:
    """Install recycling with jitter and the liveness check on ``engine``'s pool.

    ``bound(record)`` is entered around each ping: it closes a connection whose ping
    takes too long (see ``uow._engine.watchdog``), so the ping fails and is replaced.
    """
    if recycle <= 0 and not pre_ping:
        return
    dialect = engine.dialect

    @event.listens_for(engine, "connect")
    def _connected(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        # Each connection gets its own deadline between 90% and 100% of pool_recycle,
        # so connections opened together (at start-up, after a restart) are not all
        # replaced at once. The start time SQLAlchemy keeps stays true: it compares it
        # with its last disconnect, and a backdated one would be recycled again and
        # again (a reconnect storm after each dropped connection).
        jitter = random.uniform(0.9, 1.0)  # noqa: S311 - spreading load, not security
        record.info[_RECYCLE_AT] = time.monotonic() + recycle * jitter if recycle > 0 else math.inf
        record.info.pop(_IDLE_SINCE, None)  # a fresh connection needs no check

    @event.listens_for(engine, "checkin")
    def _returned(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _check(dbapi_connection: Any, record: ConnectionPoolEntry, proxy: Any) -> None:
        now = time.monotonic()
        # Raising DisconnectionError here is SQLAlchemy's documented way to have the
        # pool replace a connection at checkout.
        if now >= record.info.get(_RECYCLE_AT, math.inf):
            raise Recycled("connection reached its pool_recycle age")
        idle_since = record.info.get(_IDLE_SINCE)
        if not pre_ping or idle_since is None:
            return
        if now - idle_since < idle_window:
            # Quiet, and libpq thinks it is fine: used at once. (The asyncio driver's
            # connection is wrapped in SQLAlchemy's adapter.)
            pgconn = getattr(dbapi_connection, "driver_connection", dbapi_connection).pgconn
            if pgconn.status == ConnStatus.OK and not select.select([pgconn.socket], [], [], 0)[0]:
                return
        try:
            with bound(record):
                dialect.do_ping(dbapi_connection)
        except Exception as exc:
            raise DisconnectionError(f"liveness check failed: {exc}") from exc
