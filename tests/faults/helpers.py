"""What every fault scenario shares: the databases it builds, what it watches, the end check.

A scenario gets a :class:`FaultWatch` from the ``fault`` fixture. It builds its databases
with :meth:`FaultWatch.database` (a unique ``application_name`` per test, so
``pg_stat_activity`` shows only this test's sessions), may record the pool and the
server while it injects faults (:meth:`FaultWatch.sampling`), and ends with
:meth:`FaultWatch.assert_clean`: no connection checked out, no session of the
application left ``idle in transaction``. The fixture runs that check again at teardown,
so a scenario cannot forget it.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from sqlalchemy import func, select

from examples.bank.models import LedgerEntry
from examples.bank.repositories import Audit
from examples.bank.unit_of_work import BankUnitOfWork
from uow import Database, PoolStats, Settings
from uow.testing import EmbeddedPostgres

__all__ = ["FaultWatch", "Sampler", "causes", "kind"]

SIDE_APPLICATION = "uow-fault-side"  # the suite's own side connections; never counted


def kind(exc: BaseException) -> str:
    """A short label for an error: its type and, for a wrapped driver error, the driver's."""
    name = type(exc).__name__
    inner = getattr(exc, "orig", None)
    if not isinstance(inner, BaseException):
        inner = exc.__cause__
    return f"{name}({type(inner).__name__})" if inner is not None else name


def causes(exc: BaseException) -> list[BaseException]:
    """The error and everything it wraps: ``orig`` (SQLAlchemy), ``__cause__``, ``__context__``."""
    seen: list[BaseException] = []
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop(0)
        if any(current is known for known in seen):
            continue
        seen.append(current)
        for inner in (getattr(current, "orig", None), current.__cause__, current.__context__):
            if isinstance(inner, BaseException):
                todo.append(inner)
    return seen


class Sampler:
    """Polls the pools and ``pg_stat_activity`` in a background thread, keeping the peaks.

    Survives the server going away: samples that cannot reach it are counted in
    ``unreachable`` and the side connection is reopened on the next tick.
    """

    def __init__(self, watch: FaultWatch, interval: float) -> None:
        self.peak_connections = 0  # server sessions of the application
        self.peak_checked_out = 0
        self.peak_waiting = 0
        self.samples = 0
        self.unreachable = 0
        self._watch = watch
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fault-sampler", daemon=True)

    def _run(self) -> None:
        conn: psycopg.Connection[Any] | None = None
        while not self._stop.wait(self._interval):
            stats = self._watch.stats()
            self.peak_checked_out = max(
                self.peak_checked_out, sum(s.pool_checked_out for s in stats)
            )
            self.peak_waiting = max(self.peak_waiting, sum(s.requests_waiting for s in stats))
            try:
                if conn is None or conn.closed or conn.broken:
                    conn = self._watch.connect_side(connect_timeout=2)
                sessions = self._watch.count_sessions(conn)
            except psycopg.Error:
                self.unreachable += 1
                if conn is not None:
                    conn.close()
                conn = None
                continue
            self.samples += 1
            self.peak_connections = max(self.peak_connections, sessions)
        if conn is not None:
            conn.close()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        assert not self._thread.is_alive(), "the sampler did not stop"

    def __str__(self) -> str:
        return (
            f"peak {self.peak_connections} server sessions, peak checked_out "
            f"{self.peak_checked_out}, peak waiting {self.peak_waiting} "
            f"({self.samples} samples, {self.unreachable} while unreachable)"
        )


class FaultWatch:
    """One test's application on the module's throwaway server, and the checks it must pass."""

    def __init__(self, server: EmbeddedPostgres, app_name: str) -> None:
        self.server = server
        self.app_name = app_name
        self.databases: list[Database] = []
        self._side: psycopg.Connection[Any] | None = None

    # -- building -------------------------------------------------------------------------

    def database(self, **settings: Any) -> Database:
        """A Database on the server, named after the test; checked and disposed at the end."""
        settings.setdefault("url", self.server.url)
        settings.setdefault("application_name", self.app_name)
        database = Database(Settings(**settings))
        self.databases.append(database)
        return database

    def connect_side(self, *, connect_timeout: int = 5) -> psycopg.Connection[Any]:
        """A new autocommit connection outside every pool, not counted as the application's."""
        return psycopg.connect(
            self.server.dsn,
            autocommit=True,
            connect_timeout=connect_timeout,
            application_name=SIDE_APPLICATION,
        )

    @property
    def side(self) -> psycopg.Connection[Any]:
        """A side connection kept for the test, reopened if a fault closed it."""
        if self._side is None or self._side.closed or self._side.broken:
            self._side = self.connect_side()
        return self._side

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Rows of a read-only query on the side connection, reconnecting once if it died."""
        try:
            return self.side.execute(sql, params).fetchall()
        except psycopg.OperationalError:  # the server restarted or ended this session
            self.side.close()
            return self.side.execute(sql, params).fetchall()

    # -- looking --------------------------------------------------------------------------

    def stats(self) -> list[PoolStats]:
        """Each database's pool statistics (its asyncio pool added in, once built)."""
        return [database.stats() for database in self.databases]

    def count_sessions(self, conn: psycopg.Connection[Any] | None = None) -> int:
        """How many server sessions the application holds right now."""
        row = (
            (conn or self.side)
            .execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                (self.app_name,),
            )
            .fetchone()
        )
        assert row is not None
        return int(row[0])

    def sessions(self) -> list[tuple[int, str]]:
        """(backend pid, state) of each server session of the application."""
        rows = self.query(
            "SELECT pid, coalesce(state, '') FROM pg_stat_activity"
            " WHERE application_name = %s ORDER BY pid",
            (self.app_name,),
        )
        return [(int(pid), str(state)) for pid, state in rows]

    def terminate_sessions(self, *, state: str | None = None) -> list[int]:
        """``pg_terminate_backend`` on the application's sessions (in ``state`` if given)."""
        # Two statements: in one, the planner may call pg_terminate_backend before the
        # application_name filter, and end other sessions (this side connection included).
        pids = [pid for pid, current in self.sessions() if state is None or current == state]
        rows = self.query(
            "SELECT pid FROM unnest(%s::int[]) AS pid WHERE pg_terminate_backend(pid)", (pids,)
        )
        return [int(pid) for (pid,) in rows]

    @contextmanager
    def sampling(self, interval: float = 0.005) -> Iterator[Sampler]:
        """Record pool status and server sessions in the background while the block runs."""
        sampler = Sampler(self, interval)
        sampler.start()
        try:
            yield sampler
        finally:
            sampler.stop()

    # -- the end check --------------------------------------------------------------------

    def assert_clean(self) -> str:
        """No connection checked out, no session idle in transaction; returns what it saw."""
        stats = self.stats()
        with self.connect_side() as conn:
            rows = conn.execute(
                "SELECT pid, coalesce(state, ''), left(query, 80) FROM pg_stat_activity"
                " WHERE application_name = %s",
                (self.app_name,),
            ).fetchall()
        leaked = [
            (db, found.pool_checked_out)
            for db, found in zip(self.databases, stats, strict=True)
            if found.pool_checked_out
        ]
        assert not leaked, f"connections still checked out: {leaked}"
        stuck = [row for row in rows if str(row[1]).startswith("idle in transaction")]
        assert not stuck, f"sessions left idle in transaction (pid, state, query): {stuck}"
        states = Counter(str(state) or "?" for _, state, _ in rows)
        return (
            f"end: checked_out=0, pool idle={sum(s.pool_available for s in stats)}, "
            f"server sessions {dict(states) or 0}"
        )

    def close(self) -> None:
        for database in self.databases:
            database.dispose()
        if self._side is not None:
            self._side.close()


class ReadyProbe:
    """Connects every 10 ms from the side; records when the server, once down, accepts again."""

    def __init__(self, dsn: str) -> None:
        self.went_down: float | None = None
        self.ready: float | None = None
        self._dsn = dsn
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fault-probe", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            try:
                psycopg.connect(self._dsn, connect_timeout=2).close()
            except psycopg.OperationalError:
                if self.went_down is None:
                    self.went_down = time.monotonic()
                continue
            if self.went_down is not None:
                self.ready = time.monotonic()
                return

    def __enter__(self) -> ReadyProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(10)


def check_bank_invariant(database: Database, *, total: int, committed: Sequence[str]) -> Audit:
    """Assert the example bank's invariant; returns the audit.

    Every balance matches the ledger and none is negative, balances sum to ``total``, and
    every transfer a client saw acknowledged (by its idempotency key) is in the ledger
    exactly once, even if the client sent it again after an error.
    """
    with BankUnitOfWork(database, readonly=True) as unit:
        audit = unit.ledger.audit()
        counts = dict(
            unit.session.execute(
                select(LedgerEntry.idempotency_key, func.count())
                .where(LedgerEntry.idempotency_key.in_(committed))
                .group_by(LedgerEntry.idempotency_key)
            ).all()
        )
    assert audit.ok and audit.negative == 0, audit
    assert audit.total_balance == total, (audit.total_balance, total)
    assert len(counts) == len(set(committed)) == len(committed), "lost or duplicated keys"
    assert all(count == 1 for count in counts.values())  # exactly once, even after retries
    return audit
