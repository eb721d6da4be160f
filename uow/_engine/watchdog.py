"""A client-side deadline: close a connection whose server stopped answering.

``statement_timeout`` runs on the server, so a server that stopped answering (a host
gone behind a firewall that drops packets, a process stopped or swapped out, a frozen
VM) never enforces it, and a thread waiting for the reply waits for minutes (TCP
retransmission) or forever (a stopped server's kernel still acknowledges the data).
The watchdog bounds that wait on the client:

- every command sent on a checked-out connection (each statement, COMMIT, ROLLBACK,
  the pool's reset) notes when it was sent: one dict store (see :func:`_stamp_sends`);
- one daemon thread per process looks at the checked-out connections about once a
  second. A connection whose command has been in progress (libpq's transaction status
  ``ACTIVE``) for longer than the statement timeout in effect plus :data:`GRACE`, and
  whose socket has received nothing for as long, is shut down (``shutdown(SHUT_RDWR)``
  on a duplicate of its socket, which wakes the thread or event loop blocked on it).
  The caller gets :class:`~uow.ConnectionLost` (or :class:`~uow.CommitOutcomeUnknown`
  when COMMIT was in flight); the server is marked, so its idle pooled connections are
  replaced at checkout instead of being used (see :mod:`uow._engine.servers`).

A cancel request is not tried: a stopped server cannot process one, and sending it
could block the watchdog itself. The checkout ping is bounded the same way, with a
limit of its own (:meth:`Deadlines.pinging`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus
from sqlalchemy import Engine, event
from sqlalchemy.pool import ConnectionPoolEntry

from .fork import at_fork_in_child
from .servers import ServerMarks, server_of

__all__ = ["GRACE", "LIMIT_KEY", "TCP_GRACE", "Deadlines"]

logger = logging.getLogger("uow")

GRACE = 5.0
"""Seconds a command may run past its statement timeout before the client gives up on it.

The server cancels a statement at its timeout and answers at once; the grace covers a
loaded server's delay in doing so, and the round trips of one execute (BEGIN, the
statement)."""

TCP_GRACE = 2 * GRACE
"""Seconds past the statement timeout for libpq's ``tcp_user_timeout`` (see ``_conninfo``).

Later than the watchdog, which also logs and marks the server: the kernel's limit is the
backstop for connections the watchdog does not watch (side connections, idle ones)."""

LIMIT_KEY = "uow_limit"
"""``record.info`` key: seconds the current unit's commands may run, grace included."""

_SINCE = "uow_sent_at"  # record.info: time.monotonic() when the current command was sent
_INODE = "uow_socket_inode"  # record.info: the socket's inode, to never shut another one
_TCPI_LAST_DATA_RECV = 52  # offset of tcpi_last_data_recv (ms) in Linux's struct tcp_info


def _driver(dbapi_connection: Any) -> Any:
    # The asyncio driver's connection is wrapped in SQLAlchemy's adapter.
    return getattr(dbapi_connection, "driver_connection", dbapi_connection)


def _quiet_for(sock: socket.socket) -> float:
    """Seconds since the socket last received data; inf when the kernel cannot tell (unix)."""
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    except OSError:
        return math.inf
    if len(raw) < _TCPI_LAST_DATA_RECV + 4:
        return math.inf
    return float(struct.unpack_from("=I", raw, _TCPI_LAST_DATA_RECV)[0]) / 1000


def _nap(limit: float) -> float:
    """How often the watchdog looks at a connection with this limit: about 10 times in it."""
    return min(1.0, max(0.05, limit / 10))


class Deadlines:
    """One engine's client-side deadlines: its default limit and where to mark servers."""

    def __init__(
        self, statement_timeout: float, marks: ServerMarks, count: Callable[[str], None]
    ) -> None:
        """``statement_timeout`` 0 means off: no deadline unless a unit sets ``timeout=``.

        ``count`` is called with ``"hung_connections"`` for each connection closed.
        """
        self.limit = statement_timeout + GRACE if statement_timeout else math.inf
        self.marks = marks
        self.count = count
        self.nap = _nap(self.limit)

    def install(self, engine: Engine) -> None:
        """Note each command's start on ``engine``'s connections; watch checked-out ones."""

        @event.listens_for(engine, "connect")
        def _opened(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
            try:
                record.info[_INODE] = os.fstat(_driver(dbapi_connection).pgconn.socket).st_ino
            except Exception:  # noqa: BLE001 - no socket to tell: never shut down
                record.info.pop(_INODE, None)

        @event.listens_for(engine, "checkout")
        def _out(dbapi_connection: Any, record: ConnectionPoolEntry, proxy: Any) -> None:
            info = record.info
            info[_SINCE] = None
            info[LIMIT_KEY] = self.limit
            watchdog = _watchdog
            watchdog._watched[record] = (self, "statement")  # watch(), inlined: every checkout
            if watchdog._thread is None or self.nap < watchdog._nap:
                watchdog._start_or_hurry(self.nap)

        @event.listens_for(engine, "checkin")
        def _in(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
            record.info[_SINCE] = None
            _watchdog._watched.pop(record, None)  # unwatch(), inlined: every checkin

        _stamp_sends(engine.dialect)

    @contextlib.contextmanager
    def pinging(self, record: ConnectionPoolEntry, limit: float) -> Iterator[None]:
        """Bound the checkout ping on ``record`` to ``limit`` seconds."""
        info = record.info
        info[_SINCE] = time.monotonic()
        info[LIMIT_KEY] = limit
        _watchdog.watch(record, self, "ping", _nap(limit))
        try:
            yield
        finally:
            info[_SINCE] = None
            _watchdog.unwatch(record)


def _stamp_sends(dialect: Any) -> None:
    """Note when each command is sent: statements, COMMIT and ROLLBACK (the pool's reset too).

    SQLAlchemy's engine events (``before_cursor_execute``, ``commit``, ``rollback``) would
    do it, but one listener on an engine makes every Connection dispatch all of its
    events (about a tenth of a short unit of work's client CPU, measured), and there are
    no dialect events for COMMIT and ROLLBACK. So the engine's own dialect instance gets
    wrappers around the five methods every command goes through: one clock read and one
    dict store per command.
    """

    def with_parameters(method: Callable[..., Any]) -> Callable[..., Any]:
        def sending(cursor: Any, statement: Any, parameters: Any, context: Any = None) -> Any:
            # context is None only in calls from outside SQLAlchemy's execute; the pool's
            # proxy has no info only on the dialect's first connection, before pooling.
            try:  # noqa: SIM105 - contextlib.suppress costs 7x more, per statement
                context._dbapi_connection.info[_SINCE] = time.monotonic()
            except (AttributeError, NotImplementedError):
                pass
            return method(cursor, statement, parameters, context)

        return sending

    def without_parameters(method: Callable[..., Any]) -> Callable[..., Any]:
        def sending(cursor: Any, statement: Any, context: Any = None) -> Any:
            try:  # noqa: SIM105 - contextlib.suppress costs 7x more, per statement
                context._dbapi_connection.info[_SINCE] = time.monotonic()
            except (AttributeError, NotImplementedError):
                pass
            return method(cursor, statement, context)

        return sending

    def through_connection(method: Callable[..., Any]) -> Callable[..., Any]:
        def sending(pooled: Any) -> Any:
            # SQLAlchemy's and the pool's calls pass the pool's proxy.
            try:  # noqa: SIM105 - see above
                pooled.info[_SINCE] = time.monotonic()
            except NotImplementedError:
                pass
            return method(pooled)

        return sending

    for name in ("do_execute", "do_executemany"):
        setattr(dialect, name, with_parameters(getattr(dialect, name)))
    dialect.do_execute_no_params = without_parameters(dialect.do_execute_no_params)
    for name in ("do_commit", "do_rollback"):
        setattr(dialect, name, through_connection(getattr(dialect, name)))


class _Watchdog:
    """The process's watchdog thread and the connections it looks at.

    ``watch`` and ``unwatch`` run at every checkout and checkin, so they take no lock in
    the common case: a dict store or pop is atomic. The lock guards only starting the
    thread and shortening its nap (a limit shorter than any watched so far, such as the
    checkout ping's). The thread naps between looks whether or not anything is watched:
    a wake-up a second costs nothing, and no watcher has to wake it.
    """

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._watched: dict[ConnectionPoolEntry, tuple[Deadlines, str]] = {}
        self._thread: threading.Thread | None = None
        self._nap = 1.0

    def watch(self, record: ConnectionPoolEntry, owner: Deadlines, what: str, nap: float) -> None:
        """Look at ``record`` every ``nap`` seconds or more often, until :meth:`unwatch`."""
        self._watched[record] = (owner, what)
        if self._thread is None or nap < self._nap:
            self._start_or_hurry(nap)

    def unwatch(self, record: ConnectionPoolEntry) -> None:
        self._watched.pop(record, None)

    def _start_or_hurry(self, nap: float) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="uow-watchdog", daemon=True)
                self._thread.start()
            if nap < self._nap:
                self._nap = nap
                self._lock.notify()

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._watched:
                    # Under the lock: a watcher that shortened the nap after adding its
                    # record (which makes this dict non-empty first) is not undone.
                    self._nap = 1.0
                self._lock.wait(self._nap)
            now = time.monotonic()
            # A copy made in one C call, which no other thread's store can interleave.
            for record, (owner, what) in list(self._watched.items()):
                try:
                    self._check(record, owner, what, now)
                except Exception:  # the watchdog must outlive any one connection's oddity
                    logger.exception("the uow watchdog failed to check a connection")

    @staticmethod
    def _check(record: ConnectionPoolEntry, owner: Deadlines, what: str, now: float) -> None:
        info = record.info
        since, limit = info.get(_SINCE), info.get(LIMIT_KEY, math.inf)
        dbapi_connection = record.dbapi_connection
        if since is None or now - since <= limit or dbapi_connection is None:
            return
        pgconn = _driver(dbapi_connection).pgconn
        if pgconn.transaction_status != TransactionStatus.ACTIVE:
            return  # between commands: the unit is busy in Python, not waiting
        try:
            fd = os.dup(pgconn.socket)
        except (psycopg.OperationalError, OSError):
            return  # closed by its owner meanwhile
        with socket.socket(fileno=fd) as sock:
            # The connection may have been closed and its descriptor number reused
            # since we read it: only the socket it was opened with is shut down. Data
            # still arriving (rows of a server-side cursor) is not a hung server, and a
            # command sent meanwhile has its own deadline.
            if (
                os.fstat(fd).st_ino != info.get(_INODE)
                or _quiet_for(sock) <= limit
                or info.get(_SINCE) != since
            ):
                return
            info[_SINCE] = None  # once per command
            sock.shutdown(socket.SHUT_RDWR)
        host, port = server_of(dbapi_connection)
        why = (
            "connect_timeout, for the checkout ping"
            if what == "ping"
            else f"the statement timeout + {GRACE:g}s grace"
        )
        logger.warning(
            "server %s:%s did not answer for %.1fs (limit %gs: %s); closed the connection",
            host,
            port,
            now - since,
            limit,
            why,
        )
        owner.count("hung_connections")
        owner.marks.mark((host, port), "stopped answering")


_watchdog = _Watchdog()


def _new_watchdog_in_child() -> None:
    global _watchdog  # noqa: PLW0603 - the parent's thread does not exist in the child
    _watchdog = _Watchdog()


at_fork_in_child(_new_watchdog_in_child)
