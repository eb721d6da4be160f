"""Read replicas: which server a readonly unit of work reads from.

A :class:`Database` with ``replica_urls`` owns one engine (one pool) per replica, built
like the primary's, with the same liveness checks, outage gate and error translation.
Only the root of a ``readonly`` unit of work is routed, here and nowhere else (the
async unit runs the same code in SQLAlchemy's greenlet bridge):

- replicas are taken in turn (round robin), each unit trying the next one;
- the unit's connection is checked out when it is routed, before user code runs, so a
  replica that cannot be reached (its connect fails, or its outage gate is refusing
  during a backoff) is skipped for the next one, then for the primary. Checking out
  sends nothing to the server: ``BEGIN READ ONLY`` still rides on the first statement;
- a replica going down is logged once, and once again when it answers again;
- for ``replica_read_after_write`` seconds after a unit that could write commits,
  readonly units in the same thread or task read from the primary instead.

A replica that is merely behind is still used: what it returns may be stale by its
replication lag (``uow doctor`` shows the lag), unless ``replica_max_lag`` is set. Then
the lag is read on a routed unit's connection, at most once every ``_LAG_CHECK_EVERY``
seconds per replica (one statement more in that one unit), and a replica lagging more
is skipped until a later check finds it caught up.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Session
from sqlalchemy.pool import Pool

from .._errors import DatabaseUnavailable
from .._settings import Settings
from .classify import first_line

__all__ = ["Replicas"]

logger = logging.getLogger("uow")

_LAG_CHECK_EVERY = 1.0  # seconds between two lag checks of one replica
# 0 once everything received is replayed: on an idle primary the last replayed
# transaction gets old without the replica lagging.
_LAG = text(
    "SELECT CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0"
    " ELSE coalesce(extract(epoch FROM now() - pg_last_xact_replay_timestamp()), 0) END"
)

# When this thread or task last committed a unit that could write, by Replicas object.
# The mapping is replaced, never changed in place: contexts copied from this one (new
# tasks, threads started by asyncio.to_thread) keep the value they were given.
_last_write: ContextVar[Mapping[int, float] | None] = ContextVar("uow_last_write", default=None)


class Replicas:
    """The replica engines of one Database, and the choice among them. Thread-safe."""

    def __init__(
        self,
        settings: Settings,
        make_engine: Callable[[Settings], Engine],
        make_async_engine: Callable[[Settings, Engine], AsyncEngine],
    ) -> None:
        """Build one engine per replica URL (no connection is opened yet)."""
        # Each replica's engine gets the primary's settings with its own URL, so pool
        # sizes, timeouts and the budget check (against that server's max_connections)
        # are the same, and every message names the replica's (masked) URL.
        self.settings = [settings.replace(url=u, replica_urls=()) for u in settings.replica_urls]
        self.urls = [s.masked_url for s in self.settings]
        self.engines = [make_engine(s) for s in self.settings]
        self._make_async_engine = make_async_engine
        self._async_engines: list[AsyncEngine] | None = None
        self._window = settings.replica_read_after_write
        self._max_lag = settings.replica_max_lag
        self._lag_due = [0.0] * len(self.engines)  # when each replica's lag is read next
        # Changed only by the one caller a period that reads that replica's lag.
        self._lagging: set[int] = set()
        self._turn = itertools.count()
        self._lock = threading.Lock()
        self._down: set[int] = set()
        self._binds: dict[tuple[int, bool, str | None], Engine] = {}

    @property
    def async_engines(self) -> list[AsyncEngine]:
        """The replicas' asyncio engines, built on first use."""
        engines = self._async_engines
        if engines is None:
            with self._lock:
                if self._async_engines is None:
                    self._async_engines = [
                        self._make_async_engine(s, sync)  # sharing its sync twin's limit
                        for s, sync in zip(self.settings, self.engines, strict=True)
                    ]
                engines = self._async_engines
        return engines

    def pools(self) -> list[tuple[Pool, Pool | None]]:
        """Each replica's pool, and its asyncio pool once built, in ``replica_urls`` order."""
        asynchronous: list[AsyncEngine | None] = [*(self._async_engines or [])]
        asynchronous += [None] * (len(self.engines) - len(asynchronous))
        return [
            (engine.pool, async_engine.sync_engine.pool if async_engine is not None else None)
            for engine, async_engine in zip(self.engines, asynchronous, strict=True)
        ]

    def route(self, session: Session, isolation: str | None, *, asynchronous: bool) -> None:
        """Point a readonly unit's new session at the next replica that answers.

        The session's connection is checked out here. When no replica answers, or this
        thread or task wrote moments ago, the session keeps its bind, the primary, and
        connects lazily as usual.

        Raises:
            PoolExhausted: The chosen replica's pool stayed full for ``pool_timeout``
                (overload is not an outage: moving it to the primary would spread it).
        """
        if self._window and self._wrote_recently():
            return
        primary = session.bind
        count = len(self.engines)
        first = next(self._turn) % count
        for index in [(first + step) % count for step in range(count)]:
            lag_check = self._max_lag > 0 and self._lag_check_due(index)
            if index in self._lagging and not lag_check:
                continue
            session.bind = self._bind(index, isolation, asynchronous)
            try:
                session.connection()
            except DatabaseUnavailable as exc:
                session.rollback()  # ends the transaction that never got a connection
                self._went_down(index, exc)
                continue
            if index in self._down:  # read without the lock: the common path takes none
                self._came_back(index)
            if lag_check and self._too_far_behind(index, session):
                session.rollback()
                continue
            return
        session.bind = primary

    def note_write(self) -> None:
        """Record that this thread or task just committed a unit that could write."""
        if self._window:
            _last_write.set({**(_last_write.get() or {}), id(self): time.monotonic()})

    def _wrote_recently(self) -> bool:
        wrote_at = (_last_write.get() or {}).get(id(self))
        return wrote_at is not None and time.monotonic() - wrote_at < self._window

    def _bind(self, index: int, isolation: str | None, asynchronous: bool) -> Engine:
        key = (index, asynchronous, isolation)
        bind = self._binds.get(key)
        if bind is None:
            # The same characteristics the primary's sessions get, applied by psycopg in
            # its BEGIN: no round trip.
            options: dict[str, Any] = {"postgresql_readonly": True}
            if isolation is not None:
                options["isolation_level"] = isolation
            engine = self.async_engines[index].sync_engine if asynchronous else self.engines[index]
            with self._lock:  # built once, as the Database builds its own binds
                bind = self._binds.get(key)
                if bind is None:
                    bind = self._binds[key] = engine.execution_options(**options)
        return bind

    def _lag_check_due(self, index: int) -> bool:
        """Whether this caller reads the replica's lag now (one caller a period does)."""
        now = time.monotonic()
        if now < self._lag_due[index]:  # read without the lock: the common path takes none
            return False
        with self._lock:
            if now < self._lag_due[index]:
                return False
            self._lag_due[index] = now + _LAG_CHECK_EVERY
        return True

    def _too_far_behind(self, index: int, session: Session) -> bool:
        # In the unit's own transaction, as its first statement: BEGIN rides on it.
        lag = float(session.execute(_LAG).scalar_one())
        if lag > self._max_lag:
            if index not in self._lagging:
                self._lagging.add(index)
                logger.warning(
                    "read replica %s lags %.1f s behind the primary, more than "
                    "replica_max_lag=%gs; readonly units of work use the next replica, or the "
                    "primary, until it catches up",
                    self.urls[index],
                    lag,
                    self._max_lag,
                )
            return True
        if index in self._lagging:
            self._lagging.discard(index)
            logger.info("read replica %s has caught up (lag %.1f s)", self.urls[index], lag)
        return False

    def _went_down(self, index: int, exc: BaseException) -> None:
        with self._lock:
            if index in self._down:
                return
            self._down.add(index)
        logger.warning(
            "read replica %s cannot be reached (%s); readonly units of work use the next "
            "replica, or the primary, until it answers again",
            self.urls[index],
            first_line(exc),
        )

    def _came_back(self, index: int) -> None:
        with self._lock:
            if index not in self._down:
                return
            self._down.discard(index)
        logger.info("read replica %s answers again", self.urls[index])

    def dispose(self, *, close: bool = True) -> None:
        """Drop the pools' idle connections (``close=False`` after a fork: forget them).

        The asyncio pools are only forgotten here; :meth:`dispose_async` closes them.
        """
        for engine in self.engines:
            engine.dispose(close=close)
        for async_engine in self._async_engines or []:
            async_engine.sync_engine.dispose(close=False)

    def after_fork(self) -> None:
        """Forget the parent's connections and reset the lock in a forked child."""
        self.dispose(close=False)
        self._lock = threading.Lock()

    async def dispose_async(self) -> None:
        """Close the asyncio engines' idle connections (from the event loop)."""
        for engine in self._async_engines or []:
            await engine.dispose()
