"""The exceptions uow raises.

Every exception uow raises derives from :class:`UnitOfWorkError`::

    UnitOfWorkError
    ├── ConfigurationError        bad URL or setting (also a ValueError)
    ├── DatabaseUnavailable       the server could not be reached or refused the login
    ├── PoolExhausted             no connection freed up within pool_timeout (also a TimeoutError)
    ├── StatementTimeout          the server cancelled a statement (statement_timeout)
    ├── TransactionRolledBack     a joined unit of work failed, so the outer one could not commit
    └── UsageError                the unit of work was used the wrong way (re-entered, wrong thread)

Errors that PostgreSQL reports about the data itself (unique violations, a write in
a read-only transaction, ...) propagate as SQLAlchemy raises them, with psycopg's
exception as ``orig``, so code that already handles them keeps working.
"""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "DatabaseUnavailable",
    "PoolExhausted",
    "StatementTimeout",
    "TransactionRolledBack",
    "UnitOfWorkError",
    "UsageError",
]


class UnitOfWorkError(Exception):
    """Base class of every exception raised by uow."""


class ConfigurationError(UnitOfWorkError, ValueError):
    """A URL or setting is invalid; the message names it, the value and what is accepted."""


class DatabaseUnavailable(UnitOfWorkError):
    """A new connection to the server could not be opened."""


class PoolExhausted(UnitOfWorkError, TimeoutError):
    """Every pooled connection stayed checked out for longer than ``pool_timeout``."""


class StatementTimeout(UnitOfWorkError):
    """The server cancelled a statement that ran past its ``statement_timeout``."""


class TransactionRolledBack(UnitOfWorkError):
    """The transaction was rolled back instead of committed because a joined unit failed."""


class UsageError(UnitOfWorkError, RuntimeError):
    """A unit of work was used in a way that cannot work (re-entered, from another thread)."""
