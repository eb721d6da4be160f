"""One connection limit per process and server, shared by the sync and asyncio pools.

A Database builds two pools to each server it uses: ``FairQueuePool`` for threads and
``AsyncQueuePool`` for asyncio tasks. Each on its own may open ``pool_size +
max_overflow`` connections, so a process using both would hold twice that. A
:class:`ConnectionLimit` is the one budget both draw from: a pool takes a slot when it
opens a connection and gives it back when that connection is closed, so the two pools
together never hold more than ``pool_size + max_overflow`` open connections.

The design, and why:

* **A slot is held while a connection is open, not while it is checked out.** That is
  what the server counts against ``max_connections``. Checkout of an idle connection,
  the common case, does not touch the limit at all: the fast path costs nothing more.
* **Idle connections of one kind must not starve the other.** A pool that needs a new
  connection and finds no slot registers as waiting; then (a) the other pool, on its
  next return, closes the returned connection instead of keeping it idle, which frees a
  slot (a sync release wakes an asyncio waiter and vice versa), and (b) each time the
  waiter looks and finds no slot, it asks the other pool to close one of its idle
  connections now. A sync pool does that
  inline (closing a socket from any thread is safe); an asyncio pool does it on its own
  event loop (``call_soon_threadsafe``), since an asyncio connection may only be used
  there. A waiter polls for a free slot in short waits (50 ms) up to ``pool_timeout``,
  then raises ``PoolExhausted``; an asyncio waiter waits by awaiting, never blocking its
  event loop.
* **Waiters of one kind keep their own order** (the sync pool's FIFO gate, asyncio's
  queue); across kinds a freed slot goes to whichever pool looks first. Handing a
  connection over to the other kind costs it one reconnect, paid only when both kinds
  contend for a full budget.

``dispose()`` gives the closed idle connections' slots back. A pool replaced by
``recreate()`` (``engine.dispose()``) leaves the limit, as SQLAlchemy drops it: the
connections still checked out from it are not counted any more and are closed when it
is garbage collected.

After ``os.fork()`` the child's limits start at zero: the inherited connections belong
to the parent, and the child's pools forget them (see ``uow._engine.fork``).

Thread-safe: the counts change under one lock.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Protocol

__all__ = ["ConnectionLimit", "SharedPool"]


class SharedPool(Protocol):
    """A pool drawing from a :class:`ConnectionLimit`."""

    slots: int  # the limit's slots this pool holds; changed under the limit's lock
    generation: int  # the limit's generation when the pool joined it

    def close_idle_for_limit(self) -> None:
        """Close one idle connection (soon, from the pool's own context) to free a slot."""


class ConnectionLimit:
    """At most ``limit`` connections open at once, across every pool that shares it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.generation = 0  # bumped in a forked child: older pools no longer count
        self._lock = threading.Lock()
        self._open = 0
        self._waiting: dict[int, int] = {}  # id(kind) -> pools of that kind waiting for a slot
        self._pools: weakref.WeakSet[SharedPool] = weakref.WeakSet()
        _LIMITS.add(self)

    @property
    def open(self) -> int:
        """Connections open now, in all the pools sharing this limit."""
        return self._open

    def join(self, pool: SharedPool) -> None:
        """Register ``pool`` so that waiters of the other kind can ask it for a slot."""
        with self._lock:
            pool.slots = 0
            pool.generation = self.generation
            self._pools.add(pool)

    def try_take(self, pool: SharedPool) -> bool:
        """Take a slot for a connection ``pool`` is about to open, if one is free; never waits."""
        with self._lock:
            if self._open < self.limit:
                self._open += 1
                pool.slots += 1
                return True
        return False

    def give_back(self, pool: SharedPool, count: int = 1) -> None:
        """``count`` of ``pool``'s connections were closed (or never opened)."""
        with self._lock:
            if pool.generation != self.generation:
                return  # taken before a fork: the child's count started at zero
            count = min(count, pool.slots)
            pool.slots -= count
            self._open -= count

    def leave(self, pool: SharedPool) -> None:
        """``pool`` was replaced (``recreate()``): its connections no longer count."""
        self.give_back(pool, pool.slots)
        with self._lock:
            self._pools.discard(pool)

    def wait_begins(self, kind: type) -> None:
        """A pool of ``kind`` waits for a slot: the others close what is returned to them."""
        with self._lock:
            self._waiting[id(kind)] = self._waiting.get(id(kind), 0) + 1

    def reclaim(self, kind: type) -> None:
        """A waiting pool of ``kind`` found no slot: ask the other kinds to close an idle one."""
        with self._lock:
            others = [p for p in self._pools if type(p) is not kind]
        for pool in others:
            pool.close_idle_for_limit()

    def wait_ends(self, kind: type) -> None:
        with self._lock:
            self._waiting[id(kind)] -= 1

    def others_waiting(self, kind: type) -> bool:
        """Whether a pool of another kind waits for a slot (read without the lock: a hint)."""
        waiting = self._waiting
        if not waiting:  # nobody ever waited: the common case, one dict test per return
            return False
        return any(n for k, n in list(waiting.items()) if k != id(kind))

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        self._open = 0
        self._waiting = {}
        self._pools = weakref.WeakSet()  # the child's pools join afresh (recreate())
        self.generation += 1


_LIMITS: weakref.WeakSet[ConnectionLimit] = weakref.WeakSet()


def _reset_in_child() -> None:
    for limit in list(_LIMITS):
        limit._after_fork_in_child()


os.register_at_fork(after_in_child=_reset_in_child)
