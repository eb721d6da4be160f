"""Run a test's units of work inside one transaction that is rolled back at the end."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, event
from sqlalchemy.orm import Session

from .._database import Database
from .._default import _swap_default

__all__ = ["rolled_back"]


class _BoundDatabase(Database):
    """A Database whose sessions all run on one connection, inside its transaction."""

    def __init__(self, parent: Database, connection: Connection) -> None:
        # Shares the parent's engine: no new pool, nothing to dispose.
        self.settings = parent.settings
        self.engine = parent.engine
        self._sessionmakers = {}
        self._lock = parent._lock
        self._counters = parent._counters  # events count towards the real database
        self._connection = connection
        self._local_timeouts = parent._local_timeouts
        # Readonly units too run on the test's connection: a replica cannot see its writes.
        self._replicas = None

    def _new_session(self, *, readonly: bool = False, isolation: str | None = None) -> Session:
        # readonly and isolation cannot change inside the test's open transaction;
        # they are exercised by tests on a real Database instead.
        session = Session(
            bind=self._connection,
            join_transaction_mode="create_savepoint",
            expire_on_commit=False,
            close_resets_only=False,
        )
        event.listen(session, "after_begin", self._local_timeouts)  # timeout= still applies
        return session

    def dispose(self) -> None:
        """Nothing to do: the pool belongs to the parent database."""


@contextmanager
def rolled_back(database: Database) -> Iterator[Database]:
    """Make every unit of work on the yielded database part of one rolled-back transaction.

    Units of work commit as usual (each commit releases a SAVEPOINT), so code under
    test behaves as in production, but nothing is left in the database afterwards.
    The yielded database is also installed as the default, for ``UnitOfWork()``.
    This is SQLAlchemy 2's ``join_transaction_mode="create_savepoint"`` recipe.
    """
    with database.engine.connect() as connection:
        transaction = connection.begin()
        bound = _BoundDatabase(database, connection)
        previous = _swap_default(bound)
        try:
            yield bound
        finally:
            _swap_default(previous)
            if transaction.is_active:
                transaction.rollback()
