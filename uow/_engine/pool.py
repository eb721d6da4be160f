"""QueuePools that serve waiting threads and tasks first come, first served.

SQLAlchemy's QueuePool wakes waiters through a condition variable, which makes no
promise about order: under overload a few threads keep winning while the rest time
out (sqlalchemy#7679); its asyncio pool's queue lets a task that was not waiting take
a returned connection from under the woken waiter (``uow._engine.fair_gate``). Both of
uow's pools put a FIFO gate with one permit per connection (``pool_size +
max_overflow``) in front of checkout. A returned permit is handed straight to the
oldest waiter, so nobody can barge past the queue, and every caller waits about
``callers / connections x hold time``.

Both pools draw their connections from one :class:`~uow._engine.limit.ConnectionLimit`
per server (``build_engine`` hands the sync pool's to the asyncio pool), so a process
running sync and async units together still holds at most ``pool_size + max_overflow``
connections; ``uow._engine.limit`` explains how the two kinds hand slots over.

Everything else (creation, pre-ping, recycle, reset on return, events) is
SQLAlchemy's own QueuePool, unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from sqlalchemy import exc as sa_exc
from sqlalchemy.pool import AsyncAdaptedQueuePool, ConnectionPoolEntry, Pool, QueuePool
from sqlalchemy.util import await_only, greenlet_spawn
from sqlalchemy.util import queue as sqla_queue

from .._errors import PoolExhausted
from .fair_gate import _FairGate
from .limit import ConnectionLimit
from .metrics import PoolMetrics

__all__ = ["AsyncQueuePool", "FairQueuePool", "share_limit"]


class _LimitedPool(QueuePool):
    """A QueuePool whose connections take slots from a (possibly shared) ConnectionLimit."""

    _limit: ConnectionLimit | None = None
    _gate: _FairGate | None = None
    _on_recreate: tuple[Callable[[], object], ...] = ()
    slots = 0  # the limit's slots held (see ConnectionLimit)
    generation = 0
    metrics: PoolMetrics

    def _own_limit(self, pool_size: int, max_overflow: int) -> None:
        # With max_overflow=-1 (no limit) nobody ever waits: no gate, no limit.
        self.metrics = PoolMetrics()
        if max_overflow >= 0 and pool_size > 0:
            self._gate = _FairGate(pool_size + max_overflow)
            self.share_limit(ConnectionLimit(pool_size + max_overflow))

    @property
    def waiting(self) -> int:
        """How many callers are queued for a connection right now."""
        return self._gate.waiting if self._gate is not None else 0

    def _do_get(self) -> ConnectionPoolEntry:
        metrics = self.metrics
        started = time.monotonic()
        gate = self._gate
        try:
            if gate is None:
                record = super()._do_get()
            else:
                queued = self._acquire(gate, started)
                try:
                    record = self._get_with_permit(started, queued)
                except BaseException:
                    gate.release()
                    raise
        except PoolExhausted:
            metrics.request_done(started, timeout=True)
            raise
        except sa_exc.TimeoutError:
            metrics.request_done(started, timeout=True)
            raise self._exhausted(time.monotonic() - started) from None
        except BaseException:
            metrics.request_done(started, error=True)
            raise
        metrics.request_done(started)
        return record

    def _acquire(self, gate: _FairGate, started: float) -> bool:
        """Take a permit, queueing up to pool_timeout if need be; returns whether it queued."""
        if gate.try_acquire():  # the common case: a connection is free, nobody queues
            return False
        self.metrics.enter_queue()
        try:
            acquired = self._wait_for_permit(gate, self._timeout)
        finally:
            self.metrics.leave_queue()
        if not acquired:
            raise self._exhausted(time.monotonic() - started)
        return True

    def _wait_for_permit(self, gate: _FairGate, timeout: float) -> bool:
        return gate.acquire(timeout)

    def _get_with_permit(self, started: float, queued: bool) -> ConnectionPoolEntry:
        # Holding a permit means fewer than pool_size + max_overflow connections are
        # checked out, so either one is idle in the queue or we may open a new one; or a
        # connection is being closed on return right now and frees its slot in a moment.
        # Look again in short waits, never longer than pool_timeout in all, so a slot
        # freed without a connection going back to the queue is seen too.
        return self._get_or_open(started, _POLL, queued)

    def on_recreate(self, callback: Callable[[], object]) -> None:
        """Call ``callback()`` each time this pool is replaced (``engine.dispose()``).

        The engine's ``engine_disposed`` event says the same, but a listener on an engine
        makes every Connection dispatch all of its events (see ``uow._engine.watchdog``).
        """
        self._on_recreate += (callback,)

    def share_limit(self, limit: ConnectionLimit) -> None:
        """Draw connections from ``limit`` (call before the first connection is opened)."""
        self._limit = limit
        limit.join(self)

    @property
    def limit(self) -> ConnectionLimit | None:
        """The connection limit this pool shares with its siblings (None: unbounded)."""
        return self._limit

    def _inc_overflow(self) -> bool:
        limit = self._limit
        if limit is None:
            return super()._inc_overflow()
        if not limit.try_take(self):
            return False
        if super()._inc_overflow():
            return True
        limit.give_back(self)
        return False

    def _dec_overflow(self) -> Literal[True]:
        try:
            return super()._dec_overflow()
        finally:
            if self._limit is not None:
                self._limit.give_back(self)

    def dispose(self) -> None:
        idle = self._pool.qsize()
        super().dispose()  # closes the idle ones without _dec_overflow
        self._give_back(idle)

    def _leave_limit(self) -> None:
        # Replaced by recreate(): like SQLAlchemy's, this pool's remaining connections are
        # dropped with it (closed when garbage collected); they no longer count.
        if self._limit is not None:
            self._limit.leave(self)
            self._limit = None

    def _give_back(self, count: int) -> None:
        if self._limit is not None and count:
            self._limit.give_back(self, count)

    def _do_return_conn(self, record: ConnectionPoolEntry) -> None:
        try:
            limit = self._limit
            # others_waiting's first test inlined: nobody ever waited, one dict test per return.
            if limit is not None and limit._waiting and limit.others_waiting(type(self)):
                # The other kind of pool waits for a slot: close this one to free it.
                try:
                    record.close()
                finally:
                    self._dec_overflow()
                return
            super()._do_return_conn(record)
        finally:
            if self._gate is not None:
                self._gate.release()

    def close_idle_for_limit(self) -> None:
        """Close one idle connection, freeing its slot for the other kind of pool."""
        try:
            record = self._pool.get(False)
        except sqla_queue.Empty:
            return
        try:
            record.close()
        finally:
            self._dec_overflow()

    def _get_or_open(self, started: float, poll: float, queued: bool) -> ConnectionPoolEntry:
        """An idle connection, or a new one once a slot is free; PoolExhausted after timeout.

        Waits in steps of at most ``poll`` seconds while the shared limit (not this
        pool's own size) is what stops it, so a slot freed by the other pool is seen.
        A wait for the limit counts as queued in the metrics, unless the gate's did.
        """
        limit = self._limit
        waiting = counted = False
        try:
            while True:
                try:
                    return self._pool.get(False)
                except sqla_queue.Empty:
                    pass
                own_full = -1 < self._max_overflow <= self._overflow
                if not own_full and self._inc_overflow():
                    try:
                        return self._create_connection()
                    except BaseException:
                        self._dec_overflow()
                        raise
                left = started + self._timeout - time.monotonic()
                if left <= 0:
                    raise self._exhausted(time.monotonic() - started)
                if not own_full and limit is not None:
                    if not waiting:
                        waiting = True
                        limit.wait_begins(type(self))
                        if not queued:
                            counted = True
                            self.metrics.enter_queue()
                    limit.reclaim(type(self))
                step = min(left, _POLL) if waiting else min(left, poll)
                try:
                    return self._pool.get(True, step)
                except sqla_queue.Empty:
                    self._check_cancelled()
                    continue
        finally:
            if waiting and limit is not None:
                limit.wait_ends(type(self))
            if counted:
                self.metrics.leave_queue()

    def _check_cancelled(self) -> None:
        """Threads cannot be cancelled; see AsyncQueuePool's."""

    def _exhausted(self, waited: float) -> PoolExhausted:
        return _exhausted(self, waited, self.waiting if self._gate is not None else None)


_POLL = 0.05  # seconds between looks for a slot freed elsewhere


class FairQueuePool(_LimitedPool):
    """QueuePool whose waiters are served in arrival order and time out as PoolExhausted.

    Thread-safe, like QueuePool. With ``max_overflow=-1`` (no limit) nobody ever waits,
    so no gate is used. ``metrics`` records each caller's wait (see ``uow._engine.metrics``).
    """

    # SQLAlchemy names a pool's logger "<module>.<class>", which would be "uow._engine.pool...":
    # users who follow SQLAlchemy's docs and turn on "sqlalchemy.pool" would see nothing.
    # This hook (SQLAlchemy's own, used by Engine; tests/integration pins that it works)
    # puts it where a pool of SQLAlchemy's would log, under our class name as every pool
    # class has its own (AsyncAdaptedQueuePool's too): sqlalchemy.pool.impl.FairQueuePool,
    # plus ".<pool_logging_name>" if one is set.
    _sqla_logger_namespace = "sqlalchemy.pool.impl.FairQueuePool"

    def __init__(self, creator: Any, pool_size: int = 5, max_overflow: int = 10, **kw: Any) -> None:
        super().__init__(creator, pool_size=pool_size, max_overflow=max_overflow, **kw)
        self._own_limit(pool_size, max_overflow)

    def recreate(self) -> FairQueuePool:
        return _keep_metrics(self, super().recreate())


class AsyncQueuePool(_LimitedPool, AsyncAdaptedQueuePool):
    """SQLAlchemy's asyncio pool behind the same FIFO gate as :class:`FairQueuePool`;
    a timeout is raised as PoolExhausted, with the numbers.

    A waiting task awaits (in SQLAlchemy's greenlet): it never blocks its event loop.
    """

    _sqla_logger_namespace = "sqlalchemy.pool.impl.AsyncQueuePool"  # see FairQueuePool's

    def __init__(self, creator: Any, pool_size: int = 5, max_overflow: int = 10, **kw: Any) -> None:
        super().__init__(creator, pool_size=pool_size, max_overflow=max_overflow, **kw)
        self._loop: asyncio.AbstractEventLoop | None = None  # where its connections live
        self._closers: set[asyncio.Task[None]] = set()
        self._own_limit(pool_size, max_overflow)

    def recreate(self) -> AsyncQueuePool:
        return _keep_metrics(self, super().recreate())

    def _wait_for_permit(self, gate: _FairGate, timeout: float) -> bool:
        return await_only(gate.acquire_async(timeout))

    def _check_cancelled(self) -> None:
        # asyncio.wait_for may swallow a cancellation that arrives as its own timeout
        # expires (Python < 3.12): waiting in short steps must not turn a cancelled or
        # timed-out task into one that keeps waiting for pool_timeout.
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise asyncio.CancelledError

    def _create_connection(self) -> Any:
        with contextlib.suppress(RuntimeError):  # SQLAlchemy connects on a loop anyway
            self._loop = asyncio.get_running_loop()
        return super()._create_connection()

    def close_idle_for_limit(self) -> None:
        """Close one idle connection on its event loop (asyncio connections live there)."""
        loop = self._loop
        if loop is None or self._pool.qsize() == 0:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._spawn_closer()
            return
        try:
            loop.call_soon_threadsafe(self._spawn_closer)
        except RuntimeError:  # that loop is closed: its connections go with it
            return

    def _spawn_closer(self) -> None:
        task = asyncio.ensure_future(greenlet_spawn(super().close_idle_for_limit))
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)


_PoolT = TypeVar("_PoolT", FairQueuePool, AsyncQueuePool)


def _keep_metrics(old: _PoolT, new: QueuePool) -> _PoolT:
    # dispose() and fork handling replace the pool; its counts carry on.
    assert isinstance(new, type(old))
    new.metrics = old.metrics
    new._on_recreate = old._on_recreate
    if old.limit is not None:
        new.share_limit(old.limit)
        old._leave_limit()
    for callback in new._on_recreate:
        callback()
    return new


def _exhausted(pool: QueuePool, waited: float, waiting: int | None) -> PoolExhausted:
    queued = f" and {waiting} more callers are queued" if waiting is not None else ""
    limit = getattr(pool, "limit", None)
    if limit is not None and limit.open > pool.checkedin() + pool.checkedout():
        # The other kind (sync or asyncio) holds the rest of the shared budget.
        queued += (
            f"; the process's sync and asyncio pools share that budget and hold "
            f"{limit.open} of {limit.limit} connections"
        )
    return PoolExhausted(
        f"no database connection became free within pool_timeout={pool._timeout:g}s "
        f"(waited {waited:.2f}s): all {pool.checkedout()} connections are checked out "
        f"(pool_size={pool.size()}, max_overflow={pool._max_overflow}){queued}. Keep units of "
        "work short (no slow I/O while one is open), or raise UOW_POOL_SIZE within the "
        "server's max_connections, or raise UOW_POOL_TIMEOUT if callers can afford to wait."
    )


def share_limit(source: Pool, target: Pool) -> None:
    """Make ``target`` (not yet connected) draw from ``source``'s connection limit."""
    if not (isinstance(source, _LimitedPool) and isinstance(target, _LimitedPool)):
        return  # a pool class from engine_options: SQLAlchemy's own limits apply
    if source.limit is not None and target.limit is not None:
        target.share_limit(source.limit)
