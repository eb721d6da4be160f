"""uow: a unit of work for SQLAlchemy 2 and PostgreSQL that keeps the database alive under load.

``with UnitOfWork() as uow:`` scopes one session to one short transaction on a
bounded, fair connection pool: it commits on success, rolls back on any error and
always returns the connection.
"""

from ._database import Database, PoolStatus
from ._default import configure, get_database
from ._errors import (
    ConfigurationError,
    DatabaseUnavailable,
    PoolExhausted,
    StatementTimeout,
    TransactionRolledBack,
    UnitOfWorkError,
    UsageError,
)
from ._repository import Repository
from ._settings import Settings
from ._unit_of_work import UnitOfWork

__all__ = [
    "ConfigurationError",
    "Database",
    "DatabaseUnavailable",
    "PoolExhausted",
    "PoolStatus",
    "Repository",
    "Settings",
    "StatementTimeout",
    "TransactionRolledBack",
    "UnitOfWork",
    "UnitOfWorkError",
    "UsageError",
    "configure",
    "get_database",
]
