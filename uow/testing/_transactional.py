"""Run a test's units of work inside one transaction that is rolled back at the end."""

from __future__ import annotations

from types import TracebackType
from typing import Any

from sqlalchemy import Connection, Transaction, event
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, AsyncTransaction
from sqlalchemy.orm import Session

from .._database import Database, _Snapshot
from .._default import _swap_default
from .._engine.budget import Budget
from .._errors import UsageError

__all__ = ["rolled_back"]


class _BoundDatabase(Database):
    """``parent``, with every session joined to one open transaction of the test.

    Only how sessions are made differs. Everything else (settings, engines, pools,
    counters, stats, status...) is the parent's: attributes this class does not set are
    looked up on the parent (``__getattr__``), so each Database feature works here as on
    the parent, including ones added later, and nothing is copied that could go stale.
    """

    def __init__(
        self,
        parent: Database,
        connection: Connection | None = None,
        async_connection: AsyncConnection | None = None,
    ) -> None:
        # No Database.__init__: no engine or pool of its own, nothing to dispose.
        self._parent = parent
        self._connection = connection
        self._async_connection = async_connection
        # Readonly units too stay on the test's connection: a replica cannot see its writes.
        self._replicas = None

    def __getattr__(self, name: str) -> Any:
        # Only called for attributes not set above: the parent's engine, settings, ...
        if name == "_parent":  # not set yet (copy, pickle): no endless recursion
            raise AttributeError(name)
        return getattr(self._parent, name)

    def _new_session(self, *, readonly: bool = False, isolation: str | None = None) -> Session:
        # readonly and isolation cannot change inside the test's open transaction;
        # they are exercised by tests on a real Database instead.
        if self._connection is None:
            raise UsageError(
                "a UnitOfWork cannot run inside `async with rolled_back(...)`: its transaction "
                "is on an asyncio connection. Use AsyncUnitOfWork there, or `with "
                "rolled_back(...)` in a synchronous test"
            )
        session = Session(bind=self._connection, **_JOINED)
        event.listen(session, "after_begin", self._local_timeouts)  # timeout= still applies
        return session

    def _new_async_session(
        self, *, readonly: bool = False, isolation: str | None = None
    ) -> AsyncSession:
        if self._async_connection is None:
            raise UsageError(
                "an AsyncUnitOfWork cannot run inside `with rolled_back(...)`: its transaction "
                "is on a synchronous connection. Use `async with rolled_back(...)` in the "
                "test's coroutine"
            )
        session = AsyncSession(bind=self._async_connection, **_JOINED)
        event.listen(session.sync_session, "after_begin", self._local_timeouts)
        return session

    @property
    def async_engine(self) -> AsyncEngine:
        """The parent's asyncio engine."""
        return self._parent.async_engine

    # About the parent's pools, replicas included (``_replicas`` is None here only so
    # that readonly units are not routed): stats(), status(), counters() and
    # replica_stats() are all views of this one reading.
    def _snapshot(self) -> _Snapshot:
        return self._parent._snapshot()

    def check(self) -> Budget:
        """The parent database's connection budget check."""
        return self._parent.check()

    def dispose(self) -> None:
        """Nothing to do: the pools belong to the parent database."""

    async def dispose_async(self) -> None:
        """Nothing to do: the pools belong to the parent database."""

    def __repr__(self) -> str:
        return f"<rolled back {self._parent!r}>"


# SQLAlchemy 2's recipe: a unit's commit releases a SAVEPOINT, its rollback rolls back to it.
_JOINED: dict[str, Any] = {
    "join_transaction_mode": "create_savepoint",
    "expire_on_commit": False,
    "close_resets_only": False,
}


class rolled_back:  # lowercase: used like a function, as contextlib's helpers are
    """Make every unit of work on the yielded database part of one rolled-back transaction.

    ``with rolled_back(database) as db:`` in a synchronous test, for ``UnitOfWork``;
    ``async with rolled_back(database) as db:`` in a coroutine, for ``AsyncUnitOfWork``
    (its transaction is on an asyncio connection). Units of work commit as usual (each
    commit releases a SAVEPOINT), so code under test behaves as in production, but
    nothing is left in the database afterwards. The other kind of unit raises
    :class:`~uow.UsageError` inside the block: the two kinds cannot share one
    connection. Readonly units stay on the test's connection (never on a replica), so
    they see its writes. ``db`` is also installed as the default database, and
    ``db.stats()``, ``db.status()`` and ``db.counters()`` report ``database``'s pools.
    This is SQLAlchemy 2's ``join_transaction_mode="create_savepoint"`` recipe.
    """

    def __init__(self, database: Database) -> None:
        """Describe the rolled-back transaction; it begins on entry."""
        self._database = database
        self._previous: Database | None = None
        self._connection: Connection | None = None
        self._transaction: Transaction | None = None
        self._async_connection: AsyncConnection | None = None
        self._async_transaction: AsyncTransaction | None = None

    def __enter__(self) -> Database:
        connection = self._database.engine.connect()
        try:
            self._transaction = connection.begin()
        except BaseException:
            connection.close()
            raise
        self._connection = connection
        return self._install(_BoundDatabase(self._database, connection=connection))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        _swap_default(self._previous)
        connection, transaction = self._connection, self._transaction
        self._connection = self._transaction = None
        assert connection is not None and transaction is not None
        try:
            if transaction.is_active:
                transaction.rollback()
        finally:
            connection.close()

    async def __aenter__(self) -> Database:
        connection = await self._database.async_engine.connect()
        try:
            self._async_transaction = await connection.begin()
        except BaseException:
            await connection.close()
            raise
        self._async_connection = connection
        return self._install(_BoundDatabase(self._database, async_connection=connection))

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        _swap_default(self._previous)
        connection, transaction = self._async_connection, self._async_transaction
        self._async_connection = self._async_transaction = None
        assert connection is not None and transaction is not None
        try:
            if transaction.is_active:
                await transaction.rollback()
        finally:
            await connection.close()

    def _install(self, bound: Database) -> Database:
        self._previous = _swap_default(bound)
        return bound
