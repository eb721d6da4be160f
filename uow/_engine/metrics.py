"""Pool metrics: the recorder of one engine's gauges, timers and counters.

What each measure means is declared in :mod:`uow._engine.stats`. One
:class:`PoolMetrics` recorder belongs to each engine's pool (the pool creates it
and hands it on when SQLAlchemy recreates the pool on ``dispose()``). The pool feeds it
the time each caller spends getting a connection; pool events feed it the rest. It
adds no round trip, and per unit of work only a few ``time.monotonic()`` calls and
integer additions under a lock.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Self

from sqlalchemy import Engine, event
from sqlalchemy.pool import ConnectionPoolEntry, Pool, QueuePool

from .fork import at_fork_in_child
from .liveness import Recycled
from .stats import DATABASE_COUNTERS, PoolStats

__all__ = ["PoolMetrics", "PoolStats", "PoolStatus", "install_metrics", "read_stats"]

_CHECKED_OUT_AT = "uow_checked_out_at"  # record.info key: when the connection left the pool


@dataclass(frozen=True, slots=True)
class PoolStatus:
    """A view of :meth:`Database.stats`' snapshot: the synchronous pools' gauges only."""

    size: int
    """Connections the pool keeps (``pool_size``; ``PoolStats.pool_min``)."""
    max_overflow: int
    """Extra connections allowed under load."""
    checked_out: int
    """Connections in use by a unit of work right now (``PoolStats.pool_checked_out``)."""
    idle: int
    """Open connections waiting in the pool (``PoolStats.pool_available``)."""
    waiting: int
    """Callers queued for a connection (``PoolStats.requests_waiting``)."""
    replicas: tuple[PoolStatus, ...] = ()
    """The same for each read replica's pool, in the order of ``replica_urls``."""

    @classmethod
    def of(cls, stats: PoolStats, max_overflow: int, replicas: tuple[PoolStatus, ...] = ()) -> Self:
        """The status part of one pool's ``stats``."""
        return cls(
            size=stats.pool_min,
            max_overflow=max_overflow,
            checked_out=stats.pool_checked_out,
            idle=stats.pool_available,
            waiting=stats.requests_waiting,
            replicas=replicas,
        )


class PoolMetrics:
    """Timers and counters of one pool. Thread-safe; every method is a few additions."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.waiting = 0
        self.requests = 0
        self.queued = 0
        self.wait_seconds = 0.0
        self.request_errors = 0
        self.timeouts = 0
        self.usage_seconds = 0.0
        self.connects = 0
        self.connect_seconds = 0.0
        self.connect_errors = 0
        self.lost = 0
        self.invalidations = 0
        at_fork_in_child(self._after_fork)

    def enter_queue(self) -> None:
        """A caller found no free connection and queues for one."""
        with self._lock:
            self.queued += 1
            self.waiting += 1

    def leave_queue(self) -> None:
        """A queued caller got a connection, timed out or was interrupted."""
        with self._lock:
            self.waiting -= 1

    def request_done(self, started: float, *, error: bool = False, timeout: bool = False) -> None:
        """A request for a connection that began at ``started`` (monotonic) ended."""
        elapsed = time.monotonic() - started
        with self._lock:
            self.requests += 1
            self.wait_seconds += elapsed
            if error or timeout:
                self.request_errors += 1
            if timeout:
                self.timeouts += 1

    def connect_done(self, started: float, *, ok: bool) -> None:
        """An attempt to open a connection that began at ``started`` ended."""
        elapsed = time.monotonic() - started
        with self._lock:
            self.connect_seconds += elapsed
            if ok:
                self.connects += 1
            else:
                self.connect_errors += 1

    def _checked_out(self, dbapi_connection: Any, record: ConnectionPoolEntry, proxy: Any) -> None:
        record.info[_CHECKED_OUT_AT] = time.monotonic()

    def _checked_in(self, dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        # record.info survives an invalidation until the record reconnects, so a
        # connection invalidated while in use is still timed.
        began = record.info.pop(_CHECKED_OUT_AT, None)
        if began is not None:
            held = time.monotonic() - began
            with self._lock:
                self.usage_seconds += held

    def _invalidated(
        self, dbapi_connection: Any, record: ConnectionPoolEntry, exception: BaseException | None
    ) -> None:
        # An invalidation with an error means the connection was found broken; one
        # without (Connection.invalidate()) or for its age (Recycled) is deliberate.
        lost = exception is not None and not isinstance(exception, Recycled)
        with self._lock:
            self.invalidations += 1
            if lost:
                self.lost += 1

    def _soft_invalidated(
        self, dbapi_connection: Any, record: ConnectionPoolEntry, exception: BaseException | None
    ) -> None:
        with self._lock:
            self.invalidations += 1

    def _after_fork(self) -> None:
        # The parent's lock may have been held at fork time, and its queued threads
        # do not exist here; the counts so far are kept, like Database.counters().
        self._lock = threading.Lock()
        self.waiting = 0


def install_metrics(engine: Engine) -> PoolMetrics:
    """Feed the pool events of ``engine`` to its pool's recorder, and return the recorder.

    Installed after uow's liveness check, so a connection the check replaces is not
    counted as checked out twice.
    """
    recorder = metrics_of(engine.pool)
    event.listen(engine, "checkout", recorder._checked_out)
    event.listen(engine, "checkin", recorder._checked_in)
    event.listen(engine, "invalidate", recorder._invalidated)
    event.listen(engine, "soft_invalidate", recorder._soft_invalidated)
    return recorder


def metrics_of(pool: Pool) -> PoolMetrics:
    """The recorder of one of uow's pools."""
    recorder = getattr(pool, "metrics", None)
    if not isinstance(recorder, PoolMetrics):
        raise TypeError(
            f"{type(pool).__name__} keeps no uow metrics; do not replace uow's pool class "
            "through engine_options['poolclass']"
        )
    return recorder


def read_stats(pool: Pool) -> PoolStats:
    """A snapshot of ``pool``'s gauges and recorder; the database's own counters are 0."""
    recorder = metrics_of(pool)
    assert isinstance(pool, QueuePool)
    size = pool.size()
    max_overflow = pool._max_overflow
    idle = pool.checkedin()
    checked_out = pool.checkedout()
    with recorder._lock:
        return PoolStats(
            pool_min=size,
            pool_max=size + max_overflow if max_overflow >= 0 else -1,
            pool_size=idle + checked_out,
            pool_available=idle,
            pool_checked_out=checked_out,
            pool_overflow=max(0, idle + checked_out - size),
            requests_waiting=recorder.waiting,
            requests_num=recorder.requests,
            requests_queued=recorder.queued,
            requests_wait_ms=recorder.wait_seconds * 1000,
            requests_errors=recorder.request_errors,
            requests_timeouts=recorder.timeouts,
            usage_ms=recorder.usage_seconds * 1000,
            connections_num=recorder.connects,
            connections_ms=recorder.connect_seconds * 1000,
            connections_errors=recorder.connect_errors,
            connections_lost=recorder.lost,
            invalidations=recorder.invalidations,
            **dict.fromkeys(DATABASE_COUNTERS, 0),  # the Database adds its own counts
        )
