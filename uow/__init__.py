"""uow: a unit of work for SQLAlchemy 2 and PostgreSQL that keeps the database alive under load.

``with UnitOfWork() as uow:`` scopes one session to one short transaction on a
bounded, fair connection pool: it commits on success, rolls back on any error and
always returns the connection.
"""

from ._async import AsyncUnitOfWork
from ._async_repository import AsyncRepository
from ._database import Database, PoolStats, PoolStatus
from ._default import configure, get_database
from ._errors import (
    CommitOutcomeUnknown,
    ConfigurationError,
    ConnectionLost,
    DatabaseUnavailable,
    DeadlockDetected,
    MultipleRowsFound,
    PoolExhausted,
    SerializationFailure,
    ServerFull,
    ServerReadOnly,
    StatementTimeout,
    TransactionRolledBack,
    TransientError,
    UnitOfWorkError,
    UsageError,
)
from ._repository import Repository
from ._retry import run_transaction, run_transaction_async, transactional
from ._settings import Settings
from ._unit_of_work import UnitOfWork

__all__ = [
    "AsyncRepository",
    "AsyncUnitOfWork",
    "CommitOutcomeUnknown",
    "ConfigurationError",
    "ConnectionLost",
    "Database",
    "DatabaseUnavailable",
    "DeadlockDetected",
    "MultipleRowsFound",
    "PoolExhausted",
    "PoolStats",
    "PoolStatus",
    "Repository",
    "SerializationFailure",
    "ServerFull",
    "ServerReadOnly",
    "Settings",
    "StatementTimeout",
    "TransactionRolledBack",
    "TransientError",
    "UnitOfWork",
    "UnitOfWorkError",
    "UsageError",
    "configure",
    "get_database",
    "run_transaction",
    "run_transaction_async",
    "transactional",
]
