"""The exceptions uow raises.

Every exception uow raises derives from :class:`UnitOfWorkError`::

    UnitOfWorkError
    ├── ConfigurationError        bad URL or setting (also a ValueError)
    ├── DatabaseUnavailable       the server could not be reached or refused the login
    │   ├── ServerFull            SQLSTATE 53300: the server is up but has no connection slot
    │   │                         left (also a TransientError: retried)
    │   └── ServerReadOnly        the server cannot take writes (read-only, a standby, a
    │                             leader still being promoted; also a TransientError: retried)
    ├── PoolExhausted             no connection freed up within pool_timeout
    │                             (also sqlalchemy.exc.TimeoutError, like QueuePool's)
    ├── StatementTimeout          the server cancelled a statement (statement_timeout)
    ├── TransientError            the transaction was rolled back; running it again may succeed
    │   ├── SerializationFailure  SQLSTATE 40001: a concurrent transaction conflicted
    │   ├── DeadlockDetected      SQLSTATE 40P01: the server broke a deadlock by aborting this one
    │   └── ConnectionLost        the connection died before COMMIT was sent
    ├── CommitOutcomeUnknown      the connection died while COMMIT was in flight
    ├── TransactionRolledBack     a joined unit of work failed, so the outer one could not commit
    └── UsageError                the unit of work was used the wrong way (re-entered, wrong thread)
        └── MultipleRowsFound     get_by() found several rows (also sqlalchemy MultipleResultsFound)

Errors are classified by SQLSTATE (psycopg's exception classes), never by message
text; the database driver's exception is the ``__cause__``.

:class:`PoolExhausted` is also a ``sqlalchemy.exc.TimeoutError``, the error SQLAlchemy
documents for a pool timeout, so ``except sqlalchemy.exc.TimeoutError`` written for
SQLAlchemy keeps catching it. It is deliberately not the builtin ``TimeoutError``: that
is ``asyncio.TimeoutError`` since Python 3.11, which asyncio code (and SQLAlchemy's
connection handling) treats as a cancelled wait rather than a full pool.

:class:`ServerFull` is a :class:`DatabaseUnavailable`, because that is what it is: no
new connection could be opened, and handlers written for it (a 503, a fallback from a
replica to the primary) are right for a full server too. It is also a
:class:`TransientError`, because unlike an outage it passes as soon as another client
disconnects: :func:`uow.run_transaction` retries it, with its backoff, the way a caller
waits for a pooled connection; and it never trips the outage backoff, which would
refuse a server that is answering.

:class:`ServerReadOnly` is the same pair for a server that answers but cannot take
writes: nothing was written, and leaving that server's connections for a writable host
(or waiting for a promotion to finish) is what a retry needs.

Errors that PostgreSQL reports about the data itself (unique violations, a write in
a unit declared ``readonly=True``, ...) propagate as SQLAlchemy raises them, with
psycopg's exception as ``orig``, so code that already handles them keeps working.
"""

from __future__ import annotations

from sqlalchemy import exc as sa_exc

__all__ = [
    "CommitOutcomeUnknown",
    "ConfigurationError",
    "ConnectionLost",
    "DatabaseUnavailable",
    "DeadlockDetected",
    "MultipleRowsFound",
    "PoolExhausted",
    "SerializationFailure",
    "ServerFull",
    "ServerReadOnly",
    "StatementTimeout",
    "TransactionRolledBack",
    "TransientError",
    "UnitOfWorkError",
    "UsageError",
]


class UnitOfWorkError(Exception):
    """Base class of every exception raised by uow."""


class ConfigurationError(UnitOfWorkError, ValueError):
    """A URL or setting is invalid; the message names it, the value and what is accepted."""


class DatabaseUnavailable(UnitOfWorkError):
    """A new connection to the server could not be opened."""


class PoolExhausted(UnitOfWorkError, sa_exc.TimeoutError):
    """Every pooled connection stayed checked out for longer than ``pool_timeout``.

    Also a ``sqlalchemy.exc.TimeoutError``, what SQLAlchemy's own QueuePool raises.
    """


class StatementTimeout(UnitOfWorkError):
    """The server cancelled a statement that ran past its ``statement_timeout``."""


class TransientError(UnitOfWorkError):
    """The transaction failed and was rolled back, but running it again may succeed.

    :func:`uow.transactional` and :func:`uow.run_transaction` retry these.
    """


class SerializationFailure(TransientError):
    """SQLSTATE 40001: the transaction conflicted with a concurrent one (SERIALIZABLE,
    REPEATABLE READ)."""


class DeadlockDetected(TransientError):
    """SQLSTATE 40P01: the server aborted this transaction to break a deadlock."""


class ServerFull(DatabaseUnavailable, TransientError):
    """SQLSTATE 53300: the server is running but refused the connection for lack of a slot
    (``too many clients already``, ``remaining connection slots are reserved``).

    The message gives the server's ``max_connections`` and reserved slots when uow has
    read them, and this process's pool budget. Retried by :func:`uow.run_transaction`
    and :func:`uow.transactional`; never treated as an outage.
    """


class ServerReadOnly(DatabaseUnavailable, TransientError):
    """The server accepted the connection but cannot take writes: a primary made read-only
    (``default_transaction_read_only``), a standby, or a leader announced before its
    promotion finished. Met by a unit that may write (SQLSTATE 25006, or the server's
    ``in_hot_standby`` / ``default_transaction_read_only`` report, checked before anything
    is sent).

    Nothing was written. The connection is discarded and the pool replaces its other
    connections to that server, so with several hosts and ``target_session_attrs=read-write``
    the next ones go to a writable host. Retried by :func:`uow.run_transaction` and
    :func:`uow.transactional`. A unit declared ``readonly=True`` is unaffected.
    """


class ConnectionLost(TransientError):
    """The connection died before COMMIT was sent, so nothing of the transaction was kept.

    The connection is discarded, never returned to the pool.
    """


class CommitOutcomeUnknown(UnitOfWorkError):
    """The connection died while COMMIT was in flight: the transaction may or may not
    have committed. Not retried automatically; check (for example by an idempotency
    key) before doing the work again."""


class TransactionRolledBack(UnitOfWorkError):
    """The transaction was rolled back instead of committed because a joined unit failed."""


class UsageError(UnitOfWorkError, RuntimeError):
    """A unit of work or repository was used in a way that cannot work (re-entered, from
    another thread, given an attribute its model does not have)."""


class MultipleRowsFound(UsageError, sa_exc.MultipleResultsFound):
    """``get_by()`` matched more than one row: its criteria do not identify one.

    Also a :class:`sqlalchemy.exc.MultipleResultsFound`, the error of SQLAlchemy's
    ``one_or_none()``, so code written against SQLAlchemy keeps catching it.
    """
