"""The variants: the same transactions, each written the way an expert writes it in its stack.

A *stack* owns one pool (opened per point, closed after it) and writes each workload
as a small function ``transaction(worker_state)``:

- W1, one short transaction: ``UPDATE bench_accounts SET balance = balance + 1 WHERE id = ?``.
- W2, a transfer: lock two rows in id order (``SELECT ... FOR UPDATE``), move 1 from one
  to the other, commit.
- W3, a bulk load of many rows into bench_rows in one transaction (``load(rows)``).

Every pooled stack gets the same pool size, ``pool_timeout`` and pre-ping setting from
:class:`Config`. pgbench, the C-level ceiling, lives in ``benchmarks/pgbench.py``.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from psycopg_pool import ConnectionPool
from sqlalchemy import Engine, bindparam, create_engine, insert, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.orm import sessionmaker

from uow import Database, Repository, Settings, UnitOfWork

from .models import ACCOUNTS, ROWS, Account, Row

__all__ = [
    "BULK_VARIANTS",
    "TRANSACTION_VARIANTS",
    "BenchUnitOfWork",
    "BulkRows",
    "Config",
    "Stack",
    "Transaction",
    "Variant",
    "WorkerState",
    "bulk_rows",
]


@dataclass(frozen=True)
class Config:
    """What every pooled variant of a point shares."""

    url: str
    """SQLAlchemy URL (``postgresql+psycopg://``)."""
    pool_size: int
    pre_ping: bool
    application_name: str
    """Set on every connection, so the poller counts this point's connections only."""
    accounts: int
    pool_timeout: float = 30.0

    @property
    def conninfo(self) -> str:
        """The same URL for libpq (psycopg, pgbench)."""
        url = make_url(self.url).set(drivername="postgresql")
        return url.render_as_string(hide_password=False)


class WorkerState:
    """One client thread's state: its random numbers. Not shared between threads."""

    __slots__ = ("_ids", "rng")

    def __init__(self, seed: int, accounts: int) -> None:
        self.rng = random.Random(seed)  # noqa: S311 - load generation, not security
        self._ids = range(1, accounts + 1)

    def account(self) -> int:
        """A uniformly random account id."""
        return self.rng.choice(self._ids)

    def pair(self) -> tuple[int, int]:
        """Two different random account ids: (source, target)."""
        source, target = self.rng.sample(self._ids, 2)
        return source, target


@dataclass(frozen=True)
class BulkRows:
    """W3's rows, built before the clock starts, in the shape each stack takes them."""

    tuples: list[tuple[int, str, int]]
    dicts: list[dict[str, Any]]

    def __len__(self) -> int:
        return len(self.tuples)


def bulk_rows(count: int) -> BulkRows:
    """``count`` rows for bench_rows (a, b, c)."""
    tuples = [(i % 1000, f"row number {i}", i * 7) for i in range(count)]
    return BulkRows(tuples, [{"a": a, "b": b, "c": c} for a, b, c in tuples])


Transaction = Callable[[WorkerState], None]


class Stack(ABC):
    """One stack's pool, and its transactions. Thread-safe, like the pool it holds."""

    def __init__(self, config: Config) -> None:
        self.config = config

    @abstractmethod
    def transaction(self, workload: str) -> Transaction:
        """The transaction function for workload ``W1`` or ``W2``."""

    @abstractmethod
    def load(self, rows: BulkRows) -> None:
        """W3: insert all rows into bench_rows in one transaction."""

    @abstractmethod
    def warm(self) -> None:
        """Open every pooled connection now, so no point measures connection start-up."""

    @abstractmethod
    def close(self) -> None:
        """Close the pool and its connections."""


# -- raw psycopg 3 with psycopg_pool ----------------------------------------------------

_W1_SQL = "UPDATE bench_accounts SET balance = balance + 1 WHERE id = %s"
_LOCK_SQL = "SELECT id, balance FROM bench_accounts WHERE id = ANY(%s) ORDER BY id FOR UPDATE"
_MOVE_SQL = "UPDATE bench_accounts SET balance = balance + %s WHERE id = %s"
_COPY_SQL = "COPY bench_rows (a, b, c) FROM STDIN"


class PsycopgStack(Stack):
    """psycopg 3 and psycopg_pool: ``with pool.connection() as conn`` commits on exit."""

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.pool = ConnectionPool(
            config.conninfo,
            min_size=config.pool_size,
            max_size=config.pool_size,
            timeout=config.pool_timeout,
            kwargs={"application_name": config.application_name},
            # psycopg_pool's own pre-ping: an empty query on every checkout.
            check=ConnectionPool.check_connection if config.pre_ping else None,
            open=False,
        )

    def transaction(self, workload: str) -> Transaction:
        return {"W1": self.w1, "W2": self.w2}[workload]

    def w1(self, worker: WorkerState) -> None:
        with self.pool.connection() as conn:
            conn.execute(_W1_SQL, (worker.account(),))

    def w2(self, worker: WorkerState) -> None:
        source, target = worker.pair()
        with self.pool.connection() as conn:
            conn.execute(_LOCK_SQL, ([source, target],)).fetchall()
            with conn.cursor() as cur:  # executemany pipelines both updates
                cur.executemany(_MOVE_SQL, [(-1, source), (1, target)])

    def load(self, rows: BulkRows) -> None:
        with self.pool.connection() as conn, conn.cursor() as cur, cur.copy(_COPY_SQL) as copy:
            for row in rows.tuples:
                copy.write_row(row)

    def warm(self) -> None:
        self.pool.open(wait=True, timeout=60)  # min_size = max_size connections

    def close(self) -> None:
        self.pool.close()


# -- SQLAlchemy Core and ORM ------------------------------------------------------------


def _engine(config: Config) -> Engine:
    return create_engine(
        config.url,
        pool_size=config.pool_size,
        max_overflow=0,
        pool_timeout=config.pool_timeout,
        pool_pre_ping=config.pre_ping,
        connect_args={"application_name": config.application_name},
    )


def _warm_engine(engine: Engine, size: int) -> None:
    connections = [engine.connect() for _ in range(size)]
    for connection in connections:
        connection.close()


_CORE_INSERT = insert(ROWS)


class CoreStack(Stack):
    """SQLAlchemy Core on a plain QueuePool: ``with engine.begin() as conn``.

    Statements are built in the call, as SQLAlchemy's documentation writes them (and
    as a caller of ``update_where`` must); SQLAlchemy caches their compiled form.
    """

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.engine = _engine(config)

    def transaction(self, workload: str) -> Transaction:
        return {"W1": self.w1, "W2": self.w2}[workload]

    def w1(self, worker: WorkerState) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(ACCOUNTS)
                .where(ACCOUNTS.c.id == worker.account())
                .values(balance=ACCOUNTS.c.balance + 1)
            )

    def w2(self, worker: WorkerState) -> None:
        source, target = worker.pair()
        accounts = ACCOUNTS.c
        with self.engine.begin() as conn:
            conn.execute(
                select(accounts.id, accounts.balance)
                .where(accounts.id.in_([source, target]))
                .order_by(accounts.id)
                .with_for_update()
            ).all()
            conn.execute(  # executemany: both updates in one pipelined round trip
                update(ACCOUNTS)
                .where(accounts.id == bindparam("account"))
                .values(balance=accounts.balance + bindparam("delta")),
                [{"account": source, "delta": -1}, {"account": target, "delta": 1}],
            )

    def load(self, rows: BulkRows) -> None:
        with self.engine.begin() as conn:
            conn.execute(_CORE_INSERT, rows.dicts)  # "insertmanyvalues" batches

    def warm(self) -> None:
        _warm_engine(self.engine, self.config.pool_size)

    def close(self) -> None:
        self.engine.dispose()


# Built once, with bound parameters: no statement construction or cache-key work per call.
_CORE_W1 = (
    update(ACCOUNTS)
    .where(ACCOUNTS.c.id == bindparam("account"))
    .values(balance=ACCOUNTS.c.balance + 1)
)


class CorePrebuiltStack(CoreStack):
    """Core with the W1 statement built once at import: the tuned ceiling of Core."""

    def transaction(self, workload: str) -> Transaction:
        return {"W1": self.w1_prebuilt}[workload]

    def w1_prebuilt(self, worker: WorkerState) -> None:
        with self.engine.begin() as conn:
            conn.execute(_CORE_W1, {"account": worker.account()})


_ORM_LOCK = select(Account).order_by(Account.id).with_for_update()


class OrmStack(Stack):
    """Plain SQLAlchemy ORM: ``with Session.begin() as session``, load, modify, commit."""

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.engine = _engine(config)
        self.sessions = sessionmaker(self.engine)

    def transaction(self, workload: str) -> Transaction:
        return {"W1": self.w1, "W2": self.w2}[workload]

    def w1(self, worker: WorkerState) -> None:
        with self.sessions.begin() as session:
            account = session.get(Account, worker.account())
            assert account is not None
            account.balance += 1

    def w2(self, worker: WorkerState) -> None:
        source, target = worker.pair()
        with self.sessions.begin() as session:
            for account in session.scalars(_ORM_LOCK.where(Account.id.in_([source, target]))):
                account.balance += -1 if account.id == source else 1

    def load(self, rows: BulkRows) -> None:
        with self.sessions.begin() as session:
            session.add_all([Row(**row) for row in rows.dicts])

    def warm(self) -> None:
        _warm_engine(self.engine, self.config.pool_size)

    def close(self) -> None:
        self.engine.dispose()


# -- uow ----------------------------------------------------------------------------------


class BenchUnitOfWork(UnitOfWork):
    """The benchmark's unit of work, declared the way users declare theirs."""

    accounts: Repository[Account]


class UowStack(Stack):
    """uow: ``with BenchUnitOfWork(db) as uow``, written with the repository, ORM style."""

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.db = Database(
            Settings(
                url=config.url,
                pool_size=config.pool_size,
                max_overflow=0,
                pool_timeout=config.pool_timeout,
                pool_pre_ping=config.pre_ping,
                application_name=config.application_name,
            )
        )

    def transaction(self, workload: str) -> Transaction:
        return {"W1": self.w1, "W2": self.w2}[workload]

    def w1(self, worker: WorkerState) -> None:
        with BenchUnitOfWork(self.db) as uow:
            account = uow.accounts.get(worker.account())
            assert account is not None
            account.balance += 1

    def w2(self, worker: WorkerState) -> None:
        source, target = worker.pair()
        with BenchUnitOfWork(self.db) as uow:
            for account in uow.accounts.list(
                Account.id.in_([source, target]), order_by=Account.id, for_update=True
            ):
                account.balance += -1 if account.id == source else 1

    def load(self, rows: BulkRows) -> None:
        with BenchUnitOfWork(self.db) as uow:
            uow.repository(Row).insert_many(rows.dicts)

    def warm(self) -> None:
        _warm_engine(self.db.engine, self.config.pool_size)

    def close(self) -> None:
        self.db.dispose()


class UowLeanStack(UowStack):
    """uow with a single UPDATE statement (``update_where``): compare it to Core."""

    def transaction(self, workload: str) -> Transaction:
        return {"W1": self.w1_lean}[workload]

    def w1_lean(self, worker: WorkerState) -> None:
        with BenchUnitOfWork(self.db) as uow:
            uow.accounts.update_where(
                {"balance": Account.balance + 1}, Account.id == worker.account()
            )


@dataclass(frozen=True)
class Variant:
    """A named way of running workloads: the stack that runs them, and which ones."""

    name: str
    stack: type[Stack]
    workloads: frozenset[str]


_BOTH = frozenset({"W1", "W2"})

TRANSACTION_VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("psycopg", PsycopgStack, _BOTH),
        Variant("core", CoreStack, _BOTH),
        Variant("core-prebuilt", CorePrebuiltStack, frozenset({"W1"})),
        Variant("orm", OrmStack, _BOTH),
        Variant("uow", UowStack, _BOTH),
        Variant("uow-lean", UowLeanStack, frozenset({"W1"})),
    )
}
"""W1 and W2 variants run in Python threads (pgbench is run separately)."""

BULK_VARIANTS: dict[str, type[Stack]] = {
    "copy": PsycopgStack,
    "insert_many": UowStack,
    "add_all": OrmStack,
    "core-executemany": CoreStack,
}
"""W3 variants: each is its stack's ``load``."""
