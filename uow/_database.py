"""Database: the engines of one PostgreSQL database, its sessions, and their statistics.

Reading order: the constructor (the primary's engine, built in ``uow._engine.build``;
a replica set if ``replica_urls`` is set), the unit-of-work seam (:meth:`_unit_session`
makes a root unit's session, routed to a replica when it may read there;
:meth:`_note_write` and :meth:`_note_retry` hear back), then observability (one
reading, :meth:`_snapshot`, from which :meth:`stats`, :meth:`replica_stats`,
:meth:`status` and :meth:`counters` are derived) and lifecycle (dispose, fork).

Locking: everything built lazily (the asyncio engine, session factories, asyncio
binds) is built once by :meth:`_once` under the database's one lock, which also guards
the counters; reads of what is already built take no lock.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any, Literal, NamedTuple, Self, TypeVar, overload

from sqlalchemy import Engine, event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session, sessionmaker

from ._conninfo import connect_args as libpq_connect_args
from ._engine.budget import Budget, budget_gate, measure_budget
from ._engine.build import build_engine, transaction_options
from ._engine.fork import at_fork_in_child
from ._engine.metrics import PoolStats, PoolStatus, read_stats
from ._engine.monitor import ORIGIN_KEY, describe_origin, watch_sessions
from ._engine.read_only import WritableCheck
from ._engine.replicas import Replicas
from ._engine.stats import DATABASE_COUNTERS
from ._engine.timeouts import TIMEOUT_KEY, LocalTimeouts, startup_timeouts
from ._errors import ConfigurationError
from ._sessions import close_session
from ._settings import Settings

__all__ = ["Database", "PoolStats", "PoolStatus"]

T = TypeVar("T")

# What the Database counts itself (declared with the PoolStats fields they fill); the
# pools' recorders count the rest.
COUNTERS = DATABASE_COUNTERS
# counters()' keys, in the order it has always listed them.
_COUNTERS_SHOWN = (
    "retries",
    "leaks",
    "long_transactions",
    "connect_failures",
    "fast_failures",
    "hung_connections",
)
_ASYNC_ENGINE = "async engine"  # the _once key of the asyncio engine
_ASYNC_SESSION_CLASS = "async session class"


class _Snapshot(NamedTuple):
    """One reading of every pool of a database: (sync, asyncio or None) per server."""

    primary: tuple[PoolStats, PoolStats | None]
    replicas: list[tuple[PoolStats, PoolStats | None]]
    counters: dict[str, int]


def _both(pools: tuple[PoolStats, PoolStats | None]) -> PoolStats:
    sync, asynchronous = pools
    return sync if asynchronous is None else sync + asynchronous


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
        self._lock = threading.RLock()
        self._built: dict[object, Any] = {}  # what _once built, by key
        self._counters = dict.fromkeys(COUNTERS, 0)
        self.engine: Engine = self._build(settings)
        self._local_timeouts = LocalTimeouts(settings)
        self._writable_check = WritableCheck(settings)
        self._replicas: Replicas | None = None
        if settings.replica_urls:
            self._replicas = Replicas(
                settings,
                self._build,
                lambda s, sync: self._build(s, asynchronous=True, share_with=sync),
            )
        at_fork_in_child(self._after_fork_in_child)

    @overload
    def _build(self, settings: Settings, *, asynchronous: Literal[False] = False) -> Engine: ...
    @overload
    def _build(
        self, settings: Settings, *, asynchronous: Literal[True], share_with: Engine
    ) -> AsyncEngine: ...
    def _build(
        self, settings: Settings, *, asynchronous: bool = False, share_with: Engine | None = None
    ) -> Engine | AsyncEngine:
        # The URL's libpq parameters are kept; uow fills in only what it leaves unset (the
        # precedence table is in uow._conninfo's docstring).
        connect_args = libpq_connect_args(settings, startup_timeouts(settings))
        if asynchronous:
            # One budget per server: the asyncio pool shares the sync pool's limit.
            return build_engine(
                settings, connect_args, self._count, asynchronous=True, share_with=share_with
            )
        return build_engine(settings, connect_args, self._count)

    def _once(self, key: object, build: Callable[[], T]) -> T:
        """What ``build()`` returns, built once per key; only the first use takes the lock."""
        found = self._built.get(key)
        if found is None:
            with self._lock:
                found = self._built.get(key)
                if found is None:
                    found = self._built[key] = build()
        return found

    @property
    def async_engine(self) -> AsyncEngine:
        """The asyncio engine (psycopg 3's async driver), built on first use, same settings."""
        return self._once(
            _ASYNC_ENGINE,
            lambda: self._build(self.settings, asynchronous=True, share_with=self.engine),
        )

    # -- the unit-of-work seam -----------------------------------------------------------

    @overload
    def _unit_session(
        self,
        *,
        readonly: bool,
        isolation: str | None,
        timeout: float | None,
        replica: bool,
        caller: FrameType,
        asynchronous: Literal[False],
    ) -> Session: ...
    @overload
    def _unit_session(
        self,
        *,
        readonly: bool,
        isolation: str | None,
        timeout: float | None,
        replica: bool,
        caller: FrameType,
        asynchronous: Literal[True],
    ) -> AsyncSession: ...
    def _unit_session(
        self,
        *,
        readonly: bool,
        isolation: str | None,
        timeout: float | None,
        replica: bool,
        caller: FrameType,
        asynchronous: bool,
    ) -> Session | AsyncSession:
        """A root unit of work's new session, ready for its block.

        It carries where the unit was opened (for leak reports) and its statement
        timeout; a readonly unit that may read from a replica is routed to one here
        (its connection checked out), unless this thread or task wrote moments ago.
        """
        made: Session | AsyncSession
        if asynchronous:
            made = self._new_async_session(readonly=readonly, isolation=isolation)
            session = made.sync_session
        else:
            made = session = self._new_session(readonly=readonly, isolation=isolation)
        s = self.settings
        if s.leak_detection_threshold or s.long_transaction_threshold:
            session.info[ORIGIN_KEY] = describe_origin(caller, s.leak_detection_stack)
        if timeout is not None:
            session.info[TIMEOUT_KEY] = timeout  # read by the after_begin listener
        if readonly and replica and self._replicas is not None:
            # After the listeners: routing checks out the connection, which begins.
            try:
                self._replicas.route(session, isolation, asynchronous=asynchronous)
            except BaseException:
                close_session(session)
                raise
        return made

    def _note_write(self) -> None:
        """A unit that could write committed: this thread's (task's) reads go to the primary."""
        if self._replicas is not None:
            self._replicas.note_write()

    def _note_retry(self) -> None:
        """A unit of work is about to run again after a transient error."""
        self._count("retries")

    def _new_session(self, *, readonly: bool = False, isolation: str | None = None) -> Session:
        """A new Session whose transactions use the given characteristics."""
        key = ("sessionmaker", readonly, isolation)
        factory: sessionmaker[Session] | None = self._built.get(key)  # _once's fast path
        if factory is None:
            factory = self._once(key, lambda: self._sessionmaker(readonly, isolation))
        return factory()

    def _new_async_session(
        self, *, readonly: bool = False, isolation: str | None = None
    ) -> AsyncSession:
        """A new AsyncSession whose transactions use the given characteristics."""
        engine = self.async_engine
        options = transaction_options(readonly, isolation)
        bind = self._once(
            ("async bind", readonly, isolation),
            lambda: engine.execution_options(**options) if options else engine,
        )
        return AsyncSession(
            bind=bind,
            expire_on_commit=False,
            close_resets_only=False,
            sync_session_class=self._once(
                (_ASYNC_SESSION_CLASS, readonly), lambda: self._async_session_class(readonly)
            ),
        )

    def _sessionmaker(self, readonly: bool, isolation: str | None) -> sessionmaker[Session]:
        bind = self.engine
        options = transaction_options(readonly, isolation)
        if options:
            bind = bind.execution_options(**options)
        # Objects stay readable after the unit of work has committed and closed.
        factory = sessionmaker(bind=bind, expire_on_commit=False, close_resets_only=False)
        self._watch(factory, readonly)
        return factory

    def _async_session_class(self, readonly: bool) -> type[Session]:
        # A per-database Session subclass carries the monitor's listeners.
        session_class = type("UowAsyncSyncSession", (Session,), {})
        self._watch(session_class, readonly)
        return session_class

    def _watch(self, target: sessionmaker[Session] | type[Session], readonly: bool) -> None:
        if not readonly:
            # First: a read-only server is refused before anything is sent to it.
            event.listen(target, "after_begin", self._writable_check)
        event.listen(target, "after_begin", self._local_timeouts)
        watch_sessions(
            target,
            leak_after=self.settings.leak_detection_threshold,
            long_after=self.settings.long_transaction_threshold,
            count=self._count,
        )

    # -- observability: one snapshot, several views --------------------------------------

    def _snapshot(self) -> _Snapshot:
        """Read every pool this database has built, and its counters: memory only."""
        async_engine: AsyncEngine | None = self._built.get(_ASYNC_ENGINE)
        primary = (
            read_stats(self.engine.pool),
            read_stats(async_engine.sync_engine.pool) if async_engine is not None else None,
        )
        replicas = []
        if self._replicas is not None:
            for sync, asynchronous in self._replicas.pools():
                replicas.append(
                    (read_stats(sync), read_stats(asynchronous) if asynchronous else None)
                )
        with self._lock:
            counters = dict(self._counters)
        return _Snapshot(primary, replicas, counters)

    def stats(self) -> PoolStats:
        """Return the pool's gauges, timers and counters (psycopg_pool's names).

        Reads memory only: no round trip. The asyncio engine's pool, once built, is
        added in. See :class:`PoolStats` for each field and its HikariCP equivalent.
        This is the one read API: :meth:`status` and :meth:`counters` are views of it.
        """
        snapshot = self._snapshot()
        return dataclasses.replace(_both(snapshot.primary), **snapshot.counters)

    def replica_stats(self) -> list[PoolStats]:
        """Return each read replica's pool statistics, in ``replica_urls`` order.

        Like :meth:`stats`, but per replica engine (its asyncio pool added in once
        built); the database-wide counters (retries, leaks...) are in :meth:`stats` only.
        """
        return [_both(pools) for pools in self._snapshot().replicas]

    def status(self) -> PoolStatus:
        """Return the synchronous pool's size, use and queue (and each read replica's).

        A view of the snapshot :meth:`stats` reads, without the asyncio pools.
        """
        snapshot = self._snapshot()
        overflow = self.settings.max_overflow
        replicas = tuple(PoolStatus.of(sync, overflow) for sync, _ in snapshot.replicas)
        return PoolStatus.of(snapshot.primary[0], overflow, replicas)

    def counters(self) -> dict[str, int]:
        """Event counts since the database was created: a view of :meth:`stats`.

        ``retries``, ``leaks``, ``long_transactions``, ``fast_failures`` and
        ``hung_connections`` are the fields of :class:`PoolStats` of those names;
        ``connect_failures`` is ``connections_errors``, failed attempts to open a
        connection, summed over the primary's and the read replicas' pools.
        """
        snapshot = self._snapshot()
        failures = sum(_both(pools).connections_errors for pools in snapshot.replicas)
        counts = dict(snapshot.counters)
        counts["connect_failures"] = _both(snapshot.primary).connections_errors + failures
        return {name: counts[name] for name in _COUNTERS_SHOWN}

    # -- checks and lifecycle ----------------------------------------------------------

    def check(self) -> Budget:
        """Check the connection budget now: call it when a worker boots.

        uow also checks on each engine's first connection, but a worker that checks at
        boot fails to start, with the message, instead of answering every request with
        an error. The outcome is kept: after a failure every unit of work raises the same
        error at once, without connecting, until ``check()`` passes or the pool is disposed.
        Each read replica's pool is checked too, against that replica's server.

        Returns:
            The primary's budget.

        Raises:
            ConfigurationError: ``processes x (pool_size + max_overflow)`` does not fit
                in what a server allows; the message names the server and gives the numbers.
        """
        servers: list[tuple[Engine, Engine, Settings]] = [(self.engine, self.engine, self.settings)]
        if self._replicas is not None:
            # READ ONLY, as readonly units run there: SQLAlchemy resets a pooled
            # connection's read_only to False after one, and psycopg would then send
            # BEGIN READ WRITE, which a standby refuses.
            servers += (
                (engine, engine.execution_options(postgresql_readonly=True), settings)
                for engine, settings in zip(
                    self._replicas.engines, self._replicas.settings, strict=True
                )
            )
        budgets = [measure_budget(*server) for server in servers]
        async_engine: AsyncEngine | None = self._built.get(_ASYNC_ENGINE)
        gate = budget_gate(async_engine.sync_engine) if async_engine is not None else None
        if gate is not None:
            gate.record(budgets[0])  # the same server and process: one answer for both
        for budget in budgets:
            budget.check()
        return budgets[0]

    def _count(self, name: str) -> None:
        with self._lock:
            self._counters[name] += 1

    def _after_fork_in_child(self) -> None:
        # The child shares the parent's sockets: closing them would end the parent's
        # sessions, and using them would interleave two processes' protocol streams.
        # dispose(close=False) forgets them and starts an empty pool.
        self._lock = threading.RLock()  # another thread may have held it at fork time
        self.engine.dispose(close=False)
        async_engine: AsyncEngine | None = self._built.get(_ASYNC_ENGINE)
        if async_engine is not None:
            async_engine.sync_engine.dispose(close=False)
        if self._replicas is not None:
            self._replicas.after_fork()

    def dispose(self) -> None:
        """Close the idle connections and start a fresh pool.

        Connections still checked out are closed when they come back. The asyncio
        engine's pool is dropped too; use :meth:`dispose_async` to close its connections
        from inside the event loop.
        """
        self.engine.dispose()
        async_engine: AsyncEngine | None = self._built.get(_ASYNC_ENGINE)
        if async_engine is not None:
            async_engine.sync_engine.dispose(close=False)
        if self._replicas is not None:
            self._replicas.dispose()

    async def dispose_async(self) -> None:
        """Close the asyncio engines' idle connections (call it from the event loop)."""
        async_engine: AsyncEngine | None = self._built.get(_ASYNC_ENGINE)
        if async_engine is not None:
            await async_engine.dispose()
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
