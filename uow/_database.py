"""Database: one pooled engine and its session factories, built from Settings."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Literal, Self, overload

from sqlalchemy import Engine, event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session, sessionmaker

from ._conninfo import connect_args as libpq_connect_args
from ._engine.budget import Budget, read_budget
from ._engine.build import build_engine, transaction_options
from ._engine.fork import at_fork_in_child
from ._engine.metrics import PoolStats, read_stats
from ._engine.monitor import watch_sessions
from ._engine.pool import FairQueuePool
from ._engine.replicas import Replicas
from ._engine.timeouts import LocalTimeouts, startup_timeouts
from ._errors import ConfigurationError
from ._settings import Settings

__all__ = ["ISOLATION_LEVELS", "Database", "PoolStats", "PoolStatus"]

logger = logging.getLogger("uow")

COUNTERS = ("retries", "leaks", "long_transactions", "connect_failures", "fast_failures")
ISOLATION_LEVELS = frozenset({"SERIALIZABLE", "REPEATABLE READ", "READ COMMITTED"})


@dataclass(frozen=True, slots=True)
class PoolStatus:
    """A snapshot of a database's connection pool."""

    size: int
    """Connections the pool keeps (``pool_size``)."""
    max_overflow: int
    """Extra connections allowed under load."""
    checked_out: int
    """Connections in use by a unit of work right now."""
    idle: int
    """Open connections waiting in the pool."""
    waiting: int
    """Callers queued for a connection."""
    replicas: tuple[PoolStatus, ...] = ()
    """The same for each read replica's pool, in the order of ``replica_urls``."""


class Database:
    """A PostgreSQL database: one SQLAlchemy engine with a bounded, fair pool.

    Build one per process (``uow.configure()`` does it for you) and share it: it is
    thread-safe. Connections are opened lazily, on first use, and each gets the
    server-side timeouts and ``application_name`` from the settings at no extra
    round trip (they travel in the startup packet). After ``os.fork()`` the child
    drops the inherited connections without touching the parent's sockets.
    """

    def __init__(self, settings: Settings | None = None, /, **overrides: Any) -> None:
        """Create the engine (no connection is opened yet).

        Args:
            settings: what to connect to; defaults to ``Settings.from_env()``.
            **overrides: settings to change, e.g. ``pool_size=10``.
        """
        if settings is None:
            settings = Settings.from_env(**overrides)
        elif not isinstance(settings, Settings):
            # Not the value: a URL passed here by mistake may carry a password.
            raise ConfigurationError(
                f"Database() takes a uow.Settings, not a {type(settings).__name__}; "
                "for a URL, use Database(url=...) or Database(Settings(url=...))"
            )
        elif overrides:
            settings = settings.replace(**overrides)
        self.settings = settings
        self._lock = threading.Lock()
        self._counters = dict.fromkeys(COUNTERS, 0)
        self.engine: Engine = self._build(settings)
        self._sessionmakers: dict[tuple[bool, str | None], sessionmaker[Session]] = {}
        self._async_engine: AsyncEngine | None = None
        self._async_binds: dict[tuple[bool, str | None], AsyncEngine] = {}
        self._async_session_class: type[Session] | None = None
        self._local_timeouts = LocalTimeouts(settings)
        self._replicas: Replicas | None = None
        if settings.replica_urls:
            self._replicas = Replicas(
                settings,
                self._build,
                lambda s: self._build(s, asynchronous=True),
            )
        at_fork_in_child(self._after_fork_in_child)

    @overload
    def _build(self, settings: Settings, *, asynchronous: Literal[False] = False) -> Engine: ...
    @overload
    def _build(self, settings: Settings, *, asynchronous: Literal[True]) -> AsyncEngine: ...
    def _build(self, settings: Settings, *, asynchronous: bool = False) -> Engine | AsyncEngine:
        # The URL's libpq parameters are kept; uow fills in only what it leaves unset (the
        # precedence table is in uow._conninfo's docstring).
        connect_args = libpq_connect_args(settings, startup_timeouts(settings))
        if asynchronous:
            return build_engine(settings, connect_args, self._count, asynchronous=True)
        return build_engine(settings, connect_args, self._count)

    def _new_session(self, *, readonly: bool = False, isolation: str | None = None) -> Session:
        """A new Session whose transactions use the given characteristics."""
        key = (readonly, isolation)
        factory = self._sessionmakers.get(key)
        if factory is None:
            with self._lock:
                factory = self._sessionmakers.get(key)
                if factory is None:
                    factory = self._sessionmakers[key] = self._make_sessionmaker(*key)
        return factory()

    @property
    def async_engine(self) -> AsyncEngine:
        """The asyncio engine (psycopg 3's async driver), built on first use, same settings."""
        engine = self._async_engine
        if engine is None:
            with self._lock:
                if self._async_engine is None:
                    self._async_engine = self._build(self.settings, asynchronous=True)
                engine = self._async_engine
        return engine

    def _new_async_session(
        self, *, readonly: bool = False, isolation: str | None = None
    ) -> AsyncSession:
        """A new AsyncSession whose transactions use the given characteristics."""
        key = (readonly, isolation)
        bind = self._async_binds.get(key)
        if bind is None:
            options = transaction_options(readonly, isolation)
            bind = self.async_engine.execution_options(**options) if options else self.async_engine
            self._async_binds[key] = bind
        if self._async_session_class is None:
            # A per-database Session subclass carries the monitor's listeners.
            session_class = type("UowAsyncSyncSession", (Session,), {})
            self._watch(session_class)
            self._async_session_class = session_class
        return AsyncSession(
            bind=bind,
            expire_on_commit=False,
            close_resets_only=False,
            sync_session_class=self._async_session_class,
        )

    def _watch(self, target: sessionmaker[Session] | type[Session]) -> None:
        event.listen(target, "after_begin", self._local_timeouts)
        watch_sessions(
            target,
            leak_after=self.settings.leak_detection_threshold,
            long_after=self.settings.long_transaction_threshold,
            count=self._count,
        )

    def _make_sessionmaker(self, readonly: bool, isolation: str | None) -> sessionmaker[Session]:
        bind = self.engine
        options = transaction_options(readonly, isolation)
        if options:
            bind = bind.execution_options(**options)
        # Objects stay readable after the unit of work has committed and closed.
        factory = sessionmaker(bind=bind, expire_on_commit=False, close_resets_only=False)
        self._watch(factory)
        return factory

    @property
    def _watched(self) -> bool:
        s = self.settings
        return bool(s.leak_detection_threshold or s.long_transaction_threshold)

    def status(self) -> PoolStatus:
        """Return the pool's current size, use and queue (and each read replica's)."""
        replicas = self._replicas.engines if self._replicas is not None else []
        return _pool_status(
            self.engine, self.settings, tuple(_pool_status(e, self.settings) for e in replicas)
        )

    def stats(self) -> PoolStats:
        """Return the pool's gauges, timers and counters (psycopg_pool's names).

        Reads memory only: no round trip. The asyncio engine's pool, once built, is
        added in. See :class:`PoolStats` for each field and its HikariCP equivalent.
        """
        with self._lock:
            counters = dict(self._counters)
        stats = read_stats(self.engine.pool, counters)
        if self._async_engine is not None:
            stats += read_stats(self._async_engine.sync_engine.pool, {})
        return stats

    def replica_stats(self) -> list[PoolStats]:
        """Return each read replica's pool statistics, in ``replica_urls`` order.

        Like :meth:`stats`, but per replica engine (its asyncio pool added in once
        built); the database-wide counters (retries, leaks...) are in :meth:`stats` only.
        """
        replicas = self._replicas
        if replicas is None:
            return []
        found = [read_stats(engine.pool, {}) for engine in replicas.engines]
        if replicas._async_engines is not None:
            for i, engine in enumerate(replicas._async_engines):
                found[i] += read_stats(engine.sync_engine.pool, {})
        return found

    def check(self) -> Budget:
        """Check the connection budget now (uow also does on its first connection).

        Each read replica's pool is checked too, against that replica's server.

        Returns:
            The primary's budget.

        Raises:
            ConfigurationError: ``processes x (pool_size + max_overflow)`` does not fit
                in what a server allows; the message names the server and gives the numbers.
        """
        servers: list[tuple[Engine, Settings]] = [(self.engine, self.settings)]
        if self._replicas is not None:
            # READ ONLY, as readonly units run there: SQLAlchemy resets a pooled
            # connection's read_only to False after one, and psycopg would then send
            # BEGIN READ WRITE, which a standby refuses.
            servers += (
                (engine.execution_options(postgresql_readonly=True), settings)
                for engine, settings in zip(
                    self._replicas.engines, self._replicas.settings, strict=True
                )
            )
        budgets = []
        for engine, settings in servers:
            with engine.connect() as connection:
                dbapi_connection = connection.connection.dbapi_connection
                budgets.append(read_budget(dbapi_connection, settings))
        for budget in budgets:
            budget.check()
        return budgets[0]

    def counters(self) -> dict[str, int]:
        """Event counts since the database was created.

        ``retries``: units of work run again after a transient error;
        ``leaks``: connections held past ``leak_detection_threshold``;
        ``long_transactions``: transactions open past ``long_transaction_threshold``;
        ``connect_failures``: failed attempts to open a connection;
        ``fast_failures``: connections refused without trying, during an outage.
        """
        with self._lock:
            return dict(self._counters)

    def _count(self, name: str) -> None:
        with self._lock:
            self._counters[name] += 1

    def _after_fork_in_child(self) -> None:
        # The child shares the parent's sockets: closing them would end the parent's
        # sessions, and using them would interleave two processes' protocol streams.
        # dispose(close=False) forgets them and starts an empty pool.
        self.engine.dispose(close=False)
        if self._async_engine is not None:
            self._async_engine.sync_engine.dispose(close=False)
        if self._replicas is not None:
            self._replicas.after_fork()
        self._lock = threading.Lock()

    def dispose(self) -> None:
        """Close the idle connections and start a fresh pool.

        Connections still checked out are closed when they come back. The asyncio
        engine's pool is dropped too; use :meth:`dispose_async` to close its connections
        from inside the event loop.
        """
        self.engine.dispose()
        if self._async_engine is not None:
            self._async_engine.sync_engine.dispose(close=False)
        if self._replicas is not None:
            self._replicas.dispose()

    async def dispose_async(self) -> None:
        """Close the asyncio engines' idle connections (call it from the event loop)."""
        if self._async_engine is not None:
            await self._async_engine.dispose()
        if self._replicas is not None:
            await self._replicas.dispose_async()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.dispose()

    def __repr__(self) -> str:
        s = self.settings
        replicas = f", replicas={len(s.replica_urls)}" if s.replica_urls else ""
        return (
            f"Database({s.masked_url!r}, pool_size={s.pool_size}, "
            f"max_overflow={s.max_overflow}{replicas})"
        )


def _pool_status(
    engine: Engine, settings: Settings, replicas: tuple[PoolStatus, ...] = ()
) -> PoolStatus:
    pool = engine.pool
    assert isinstance(pool, FairQueuePool)
    return PoolStatus(
        size=pool.size(),
        max_overflow=settings.max_overflow,
        checked_out=pool.checkedout(),
        idle=pool.checkedin(),
        waiting=pool.waiting,
        replicas=replicas,
    )
