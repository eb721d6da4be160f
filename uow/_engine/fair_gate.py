"""The FIFO gate in front of the sync pool's checkout (see ``uow._engine.pool``)."""

from __future__ import annotations

import threading
from collections import deque

__all__ = ["_FairGate"]


class _Waiter:
    __slots__ = ("event", "granted")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.granted = False


class _FairGate:
    """A counting semaphore that grants permits strictly in arrival order.

    The lock is re-entrant, like the one in SQLAlchemy's queue: a garbage-collected
    connection (or a generator finalised mid-unit) can be returned by a finalizer that
    runs in whichever thread allocates at that moment, even one already inside the
    gate; with a plain lock that thread would deadlock on itself.
    """

    def __init__(self, permits: int) -> None:
        self._lock = threading.RLock()
        self._free = permits
        self._waiters: deque[_Waiter] = deque()

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

    def acquire(self, timeout: float) -> bool:
        waiter = _Waiter()  # allocated outside the lock: allocation can run finalizers
        with self._lock:
            if self._free > 0 and not self._waiters:
                self._free -= 1
                return True
            self._waiters.append(waiter)
            self._dispatch()  # a permit freed by a finalizer meanwhile goes to the head
        try:
            if waiter.event.wait(timeout):
                return True
        except BaseException:
            if self._abandon(waiter):
                self.release()  # interrupted just as a permit arrived: pass it on
            raise
        return self._abandon(waiter)

    def _abandon(self, waiter: _Waiter) -> bool:
        """Leave the queue; returns True if a permit arrived just before we left."""
        with self._lock:
            if not waiter.granted:
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
            waiter.event.set()
