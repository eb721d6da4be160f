"""The FIFO gate in front of both pools' checkout (see ``uow._engine.pool``).

Threads wait on an Event, asyncio tasks on a future of their event loop; either way a
released permit is handed to the oldest waiter before anyone else can take it. That
hand-over is the point: asyncio's own Queue wakes its oldest getter but lets any task
that runs first take the item (``get_nowait``), and the woken getter then queues again
at the back. With many tasks per loop, under CPU contention, some tasks kept losing
until ``pool_timeout`` (the storm's ``uow-async`` mode: 120-184
PoolExhausted per 10 s run, where the sync mode on the same pool had none).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque

__all__ = ["_FairGate"]


class _Waiter:
    """A thread waiting for a permit."""

    __slots__ = ("event", "granted")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.granted = False

    def wake(self) -> None:
        self.event.set()


def _resolve(future: asyncio.Future[bool], granted: bool) -> None:
    if not future.done():  # cancelled meanwhile: _abandon passes the permit on
        future.set_result(granted)


class _TaskWaiter:
    """An asyncio task waiting for a permit, on its running loop."""

    __slots__ = ("future", "granted", "loop")

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.future: asyncio.Future[bool] = self.loop.create_future()
        self.granted = False

    def wake(self) -> None:
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            _resolve(self.future, True)
            return
        # Released from another thread (a connection garbage-collected there): a future
        # may only be resolved on its own loop.
        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
            self.loop.call_soon_threadsafe(_resolve, self.future, True)


class _FairGate:
    """A counting semaphore that grants permits strictly in arrival order.

    Threads call :meth:`acquire`, asyncio tasks await :meth:`acquire_async`; a gate
    serves either kind (each pool uses one). The lock is re-entrant, like the one in
    SQLAlchemy's queue: a garbage-collected connection (or a generator finalised
    mid-unit) can be returned by a finalizer that runs in whichever thread allocates at
    that moment, even one already inside the gate; with a plain lock that thread would
    deadlock on itself.
    """

    def __init__(self, permits: int) -> None:
        self._lock = threading.RLock()
        self._free = permits
        self._waiters: deque[_Waiter | _TaskWaiter] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def try_acquire(self) -> bool:
        """Take a permit if one is free and nobody is queued; never waits."""
        with self._lock:
            if self._free > 0 and not self._waiters:
                self._free -= 1
                return True
        return False

    def _enqueue(self, waiter: _Waiter | _TaskWaiter) -> bool:
        """Take a free permit (True), or queue ``waiter`` for the next one (False)."""
        with self._lock:
            if self._free > 0 and not self._waiters:
                self._free -= 1
                return True
            self._waiters.append(waiter)
            self._dispatch()  # a permit freed by a finalizer meanwhile goes to the head
        return False

    def acquire(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a permit (from a thread)."""
        waiter = _Waiter()  # allocated outside the lock: allocation can run finalizers
        if self._enqueue(waiter):
            return True
        try:
            if waiter.event.wait(timeout):
                return True
        except BaseException:
            if self._abandon(waiter):
                self.release()  # interrupted just as a permit arrived: pass it on
            raise
        return self._abandon(waiter)

    async def acquire_async(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a permit (from an asyncio task)."""
        waiter = _TaskWaiter()
        if self._enqueue(waiter):
            return True
        # A timer that resolves the future, not asyncio.timeout(): no cancellation to
        # tell apart from the task's own, and one handle instead of a context manager.
        timer = waiter.loop.call_later(timeout, self._expire, waiter)
        try:
            return await waiter.future
        except BaseException:  # cancelled
            if self._abandon(waiter):
                self.release()  # interrupted just as a permit arrived: pass it on
            raise
        finally:
            timer.cancel()

    def _expire(self, waiter: _TaskWaiter) -> None:
        if not self._abandon(waiter):
            _resolve(waiter.future, False)

    def _abandon(self, waiter: _Waiter | _TaskWaiter) -> bool:
        """Leave the queue; returns True if a permit arrived just before we left."""
        with self._lock:
            if not waiter.granted:
                with contextlib.suppress(ValueError):  # a timer's _expire took it out already
                    self._waiters.remove(waiter)
                return False
        return True

    def release(self) -> None:
        with self._lock:
            self._free += 1
            if self._waiters:
                self._dispatch()

    def _dispatch(self) -> None:
        while self._free > 0 and self._waiters:
            waiter = self._waiters.popleft()
            self._free -= 1
            waiter.granted = True
            waiter.wake()
