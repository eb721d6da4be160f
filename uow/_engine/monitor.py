"""Report transactions that hold a connection too long, naming where they were opened.

A session holds its connection exactly while a transaction is open, so one timer per
transaction serves both reports: a *long transaction* (past
``long_transaction_threshold``) and a *possible leak* (past
``leak_detection_threshold``, HikariCP's ``leakDetectionThreshold``). Each is logged
once when crossed and once more when the connection comes back. One daemon thread per
process scans the open transactions, about once a second (more often for a threshold
under 4 s); opening and ending a transaction takes no lock.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction, sessionmaker

from .fork import at_fork_in_child

__all__ = ["ORIGIN_KEY", "describe_origin", "stop_watching", "watch_sessions"]

logger = logging.getLogger("uow")

ORIGIN_KEY = "uow_origin"  # session.info key: where the unit of work was opened
_WATCH_KEY = "uow_watch"


@dataclass(eq=False, slots=True)
class _Watch:
    origin: str
    stack: str | None
    leak_after: float
    long_after: float
    count: Callable[[str], None]
    began: float
    shortest: float  # min(leak_after, long_after)
    warned_leak: bool = False
    warned_long: bool = False


def describe_origin(frame: FrameType, with_stack: bool) -> tuple[str, str | None]:
    """``file:line in function`` of the frame that opened a unit of work, and its stack."""
    origin = f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}"
    stack = "".join(traceback.format_stack(frame)) if with_stack else None
    return origin, stack


class _Monitor:
    """The process's monitor thread and the open transactions it times.

    ``add`` and ``remove`` run for every transaction, so they take no lock in the common
    case: a set add or discard is atomic. The lock guards only starting the thread and
    waking it early for a threshold shorter than any it naps for. The thread naps
    between looks whether or not anything is open: a wake-up a second costs nothing.
    """

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._open: set[_Watch] = set()
        self._thread: threading.Thread | None = None
        self._shortest = float("inf")  # the threshold the thread's current nap is based on

    def add(self, watch: _Watch) -> None:
        self._open.add(watch)
        # Wake the thread only when it would otherwise look too late: waking it on
        # every transaction would cost a context switch each.
        if self._thread is None or watch.shortest < self._shortest:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="uow-monitor", daemon=True
                    )
                    self._thread.start()
                if watch.shortest < self._shortest:
                    self._shortest = watch.shortest
                    self._lock.notify()

    def remove(self, watch: _Watch) -> None:
        self._open.discard(watch)
        if watch.warned_leak or watch.warned_long:
            held = time.monotonic() - watch.began
            logger.warning(
                "the connection of the unit of work opened at %s came back after %.1fs",
                watch.origin,
                held,
            )

    def _run(self) -> None:
        while True:
            # A copy made in one C call, which no other thread's add can interleave.
            watches = list(self._open)
            now = time.monotonic()
            for watch in watches:
                self._check(watch, now - watch.began)
            with self._lock:
                # Under the lock, after the add that a shorter threshold's watcher makes
                # first: its shorter nap is not undone.
                self._shortest = min((w.shortest for w in self._open), default=float("inf"))
                self._lock.wait(min(1.0, max(0.01, self._shortest / 4)))

    @staticmethod
    def _check(watch: _Watch, age: float) -> None:
        if not watch.warned_long and age > watch.long_after:
            watch.warned_long = True
            watch.count("long_transactions")
            logger.warning(
                "long transaction: open for %.1fs (long_transaction_threshold=%gs) in the unit "
                "of work opened at %s; keep slow work (HTTP calls, files) outside units of work",
                age,
                watch.long_after,
                watch.origin,
            )
        if not watch.warned_leak and age > watch.leak_after:
            watch.warned_leak = True
            watch.count("leaks")
            logger.warning(
                "possible connection leak: the unit of work opened at %s has held its connection "
                "for %.1fs (leak_detection_threshold=%gs)%s",
                watch.origin,
                age,
                watch.leak_after,
                f"; opened from:\n{watch.stack}" if watch.stack else "",
            )


_monitor = _Monitor()


def _new_monitor_in_child() -> None:
    global _monitor  # noqa: PLW0603 - the parent's thread does not exist in the child
    _monitor = _Monitor()


at_fork_in_child(_new_monitor_in_child)


def watch_sessions(
    factory: sessionmaker[Session] | type[Session],
    *,
    leak_after: float,
    long_after: float,
    count: Callable[[str], None],
) -> None:
    """Time every root transaction of sessions made by ``factory``.

    A threshold of 0 turns that report off; with both off nothing is installed.
    """
    if not leak_after and not long_after:
        return
    leak_after = leak_after or float("inf")
    long_after = long_after or float("inf")
    shortest = min(leak_after, long_after)

    def began(session: Session, transaction: SessionTransaction, connection: Any) -> None:
        # transaction._parent is what the public .parent property returns; reading the
        # attribute saves a call, and these listeners run for every transaction.
        if transaction._parent is not None or _WATCH_KEY in session.info:
            return
        origin, stack = session.info.get(ORIGIN_KEY) or ("<outside a unit of work>", None)
        watch = _Watch(origin, stack, leak_after, long_after, count, time.monotonic(), shortest)
        session.info[_WATCH_KEY] = watch
        monitor = _monitor
        monitor._open.add(watch)  # add(), inlined: every transaction
        if monitor._thread is None or shortest < monitor._shortest:
            monitor.add(watch)

    def ended(session: Session, transaction: SessionTransaction) -> None:
        if transaction._parent is None:
            # stop_watching, inlined: every transaction.
            watch = session.info.pop(_WATCH_KEY, None)
            if watch is not None:
                _monitor.remove(watch)

    event.listen(factory, "after_begin", began)
    event.listen(factory, "after_transaction_end", ended)


def stop_watching(session: Session) -> None:
    """Stop timing ``session``'s transaction, if it is still timed; cheap when it is not.

    SQLAlchemy sends ``after_transaction_end`` only once the transaction has closed
    cleanly: when ending it raises (the ROLLBACK of a closing session found the
    connection terminated) the event never comes, although the connection was
    invalidated and went back to the pool. A unit of work calls this after closing its
    session, whatever happened, so such a unit is not reported as a leak later.
    """
    watch = session.info.pop(_WATCH_KEY, None)
    if watch is not None:
        _monitor.remove(watch)
