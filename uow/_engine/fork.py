"""One fork hook for the package: what each part resets in a child after ``os.fork()``.

A forked child inherits the parent's memory but only the thread that forked: a lock
another thread held stays held forever, a monitor thread does not exist, and pooled
sockets are shared with the parent. Each part registers here what it resets
(:func:`at_fork_in_child`), and one ``os.register_at_fork`` hook runs them all in the
child, in the order they were registered. Bound methods are held weakly, so a Database
or pool that is garbage-collected is dropped from the registry.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from types import MethodType

__all__ = ["at_fork_in_child"]

_lock = threading.Lock()
_hooks: list[Callable[[], Callable[[], None] | None]] = []  # each returns the reset, or None
_prune_at = 64  # prune dead references once the list grows past this


def at_fork_in_child(reset: Callable[[], None]) -> None:
    """Call ``reset()`` in every child forked from now on.

    A bound method is held weakly: its object being collected unregisters it.
    A plain function is held for the life of the process.
    """
    global _prune_at  # noqa: PLW0603 - the registry is process-wide by nature
    if isinstance(reset, MethodType):
        hook: Callable[[], Callable[[], None] | None] = weakref.WeakMethod(reset)
    else:
        hook = lambda: reset  # noqa: E731 - the same shape as a WeakMethod
    with _lock:
        _hooks.append(hook)
        if len(_hooks) > _prune_at:
            _hooks[:] = [h for h in _hooks if h() is not None]
            _prune_at = 2 * len(_hooks) + 64


def _run_in_child() -> None:
    global _lock  # noqa: PLW0603 - another thread may have held it at fork time
    _lock = threading.Lock()
    for hook in list(_hooks):
        reset = hook()
        if reset is not None:
            reset()


os.register_at_fork(after_in_child=_run_in_child)
