"""Behind PgBouncer in transaction mode, uow loses no write and raises no error under load.

The hazard: psycopg prepares a statement after 5 executions, under a name (``_pg3_N``)
that lives on one server connection. In transaction mode PgBouncer hands the client
another server connection for the next transaction, where that name is missing, taken,
or, worst, names another client's statement with the same parameter types, which then
runs in its place: the UPDATE that was asked for silently never happens.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from sqlalchemy import text

from tests.conftest import libpq_dsn
from uow import Database, Settings, UnitOfWork

CLIENTS = 32
SECONDS = 3.0
# Each client runs at least this many units, however slow a loaded machine makes them:
# psycopg prepares a statement on its 5th execution, and the test below needs that.
MIN_UNITS = 12
HANG_LIMIT = 120.0  # seconds: a run this long is stuck, not slow

# Four statements of one integer parameter each, run in a random order in every
# transaction, so that each client's N-th prepared name stands for different SQL.
_STATEMENTS = [
    text("UPDATE pgb_counters SET n = n + 1 WHERE client = :c"),
    text("INSERT INTO pgb_ledger (client) VALUES (:c)"),
    text("SELECT n FROM pgb_counters WHERE client = :c"),
    text("SELECT count(*) FROM pgb_ledger WHERE client = :c"),
]


@dataclass
class Outcome:
    """What the clients saw and what the database holds afterwards."""

    acknowledged: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    lost: int = 0  # acknowledged transactions whose writes are not in the database

    @property
    def attempts(self) -> int:
        return sum(self.acknowledged.values()) + sum(self.errors.values())


@pytest.fixture
def tables(postgres_url: str) -> Iterator[str]:
    """Empty counter and ledger tables, one counter row per client."""
    dsn = libpq_dsn(postgres_url)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS pgb_counters, pgb_ledger")
        conn.execute("CREATE TABLE pgb_counters (client int PRIMARY KEY, n int NOT NULL)")
        conn.execute("CREATE TABLE pgb_ledger (id bigserial PRIMARY KEY, client int NOT NULL)")
        conn.execute(
            "INSERT INTO pgb_counters SELECT g, 0 FROM generate_series(0, %s) g", [CLIENTS - 1]
        )
    yield dsn
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE pgb_counters, pgb_ledger")


def hammer(database: Database, dsn: str) -> Outcome:
    """Run CLIENTS threads of small transactions for SECONDS (at least MIN_UNITS each), then
    check every write."""
    outcome = Outcome()
    lock = threading.Lock()
    started = time.monotonic()

    def client(number: int) -> None:
        rng = random.Random(number)
        units = 0
        while units < MIN_UNITS or time.monotonic() < started + SECONDS:
            assert time.monotonic() < started + HANG_LIMIT, f"client {number} is stuck"
            units += 1
            order = rng.sample(_STATEMENTS, len(_STATEMENTS))
            try:
                with UnitOfWork(database) as uow:
                    for statement in order:
                        uow.session.execute(statement, {"c": number})
            except Exception as exc:
                cause = exc.__cause__ or exc
                with lock:
                    outcome.errors[f"{type(cause).__name__}: {str(cause).splitlines()[0]}"] += 1
            else:
                with lock:
                    outcome.acknowledged[number] += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with psycopg.connect(dsn) as conn:
        counters = dict(conn.execute("SELECT client, n FROM pgb_counters").fetchall())
        ledger = dict(conn.execute("SELECT client, count(*) FROM pgb_ledger GROUP BY 1").fetchall())
    for number in range(CLIENTS):
        acked = outcome.acknowledged[number]
        # An unacknowledged transaction may not have written; an acknowledged one must have.
        outcome.lost += max(0, acked - counters[number]) + max(0, acked - ledger.get(number, 0))
    return outcome


def _run(url: str, dsn: str, **settings: Any) -> Outcome:
    database = Database(Settings(url=url, pool_size=CLIENTS, pool_timeout=30, **settings))
    with database:
        outcome = hammer(database, dsn)
        assert database.status().checked_out == 0
    errors = sum(outcome.errors.values())
    print(  # the figures quoted in the README come from here (pytest -s)
        f"\n{settings}: {outcome.attempts} transactions, {errors} errors "
        f"({errors / max(1, outcome.attempts):.1%}), {outcome.lost} lost writes; "
        f"{dict(outcome.errors.most_common(3))}"
    )
    return outcome


def test_transaction_mode_has_no_errors_and_no_lost_writes(bouncer_url: str, tables: str) -> None:
    """With pgbouncer='transaction', 32 clients through 4 server connections: all writes land."""
    outcome = _run(bouncer_url, tables, pgbouncer="transaction")
    assert outcome.attempts > CLIENTS * 5
    assert not outcome.errors
    assert outcome.lost == 0


def test_default_prepared_statements_break_behind_pgbouncer(bouncer_url: str, tables: str) -> None:
    """The same load with psycopg's prepared statements on fails: the test above can fail."""
    outcome = _run(
        bouncer_url,
        tables,
        pgbouncer="off",
        # What a direct connection sends in its startup packet, PgBouncer refuses.
        statement_timeout=0,
        lock_timeout=0,
        idle_in_transaction_timeout=0,
        check_budget=False,
    )
    assert outcome.errors or outcome.lost
