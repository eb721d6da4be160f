"""What UOW_PGBOUNCER changes, checked through a real PgBouncer."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, make_url, text

from tests.conftest import MakeDatabase
from tests.protocol_trace import Trace
from uow import (
    AsyncUnitOfWork,
    ConfigurationError,
    ConnectionLost,
    DatabaseUnavailable,
    StatementTimeout,
    UnitOfWork,
    UnitOfWorkError,
)
from uow._engine.session_state import session_state_problem
from uow.testing import PgBouncer


def _show(unit: UnitOfWork, *names: str) -> list[str]:
    return [unit.session.execute(text(f"SHOW {name}")).scalar_one() for name in names]


def _client_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def test_timeouts_are_set_in_every_transaction(
    make_database: MakeDatabase, bouncer_url: str
) -> None:
    """Each transaction gets the configured timeouts, and timeout= overrides the statement one."""
    database = make_database(
        url=bouncer_url,
        pgbouncer="transaction",
        statement_timeout=7,
        lock_timeout=3,
        idle_in_transaction_timeout=11,
    )
    names = ("statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout")
    for _ in range(3):
        with UnitOfWork(database) as unit:
            assert _show(unit, *names) == ["7s", "3s", "11s"]
    with UnitOfWork(database, timeout=0.25) as unit:
        assert _show(unit, *names) == ["250ms", "3s", "11s"]
        unit.commit()  # the next transaction of the block gets them again
        assert _show(unit, *names) == ["250ms", "3s", "11s"]


def test_timeouts_do_not_leak_to_other_clients(
    make_database: MakeDatabase, bouncer_url: str
) -> None:
    """SET LOCAL ends with the transaction: another client of the same server connections
    sees the server's defaults."""
    database = make_database(url=bouncer_url, pgbouncer="transaction", statement_timeout=7)
    for _ in range(20):
        with UnitOfWork(database) as unit:
            unit.session.execute(text("SELECT 1"))
    with psycopg.connect(_client_dsn(bouncer_url), autocommit=True) as other:
        for _ in range(8):  # PgBouncer has 4 server connections; visit them all
            assert other.execute("SHOW statement_timeout").fetchone() == ("0",)


def test_statement_timeout_fires_behind_pgbouncer(
    make_database: MakeDatabase, bouncer_url: str
) -> None:
    """The server still cancels a runaway statement, and the connection comes back clean."""
    database = make_database(url=bouncer_url, pgbouncer="transaction", statement_timeout=0.2)
    with pytest.raises(StatementTimeout), UnitOfWork(database) as unit:
        unit.session.execute(text("SELECT pg_sleep(2)"))
    with UnitOfWork(database) as unit:
        assert unit.session.execute(text("SELECT 1")).scalar_one() == 1


def test_prepared_statements_are_off(make_database: MakeDatabase, bouncer_url: str) -> None:
    """psycopg never prepares a statement in transaction mode, however often it runs."""
    database = make_database(url=bouncer_url, pgbouncer="transaction", pool_size=1)
    for _ in range(10):
        with UnitOfWork(database) as unit:
            unit.session.execute(text("SELECT 1"))
            raw = unit.session.connection().connection.dbapi_connection
            assert raw is not None
            assert raw.prepare_threshold is None  # type: ignore[attr-defined]


def test_a_unit_costs_one_extra_round_trip_for_its_timeouts(
    make_database: MakeDatabase,
    bouncer_url: str,
    trace: Callable[[Engine], Trace],
) -> None:
    """BEGIN, one set_config for all timeouts, the statement, COMMIT; timeout= adds nothing."""
    database = make_database(url=bouncer_url, pgbouncer="transaction", pool_size=1)
    traced = trace(database.engine)
    with UnitOfWork(database) as unit:  # opens the connection
        unit.session.execute(text("SELECT 1"))
    for timeout in (None, 2.0):
        traced.take()
        with UnitOfWork(database, timeout=timeout) as unit:
            unit.session.execute(text("SELECT 1"))
        round_trips, queries = traced.take()
        assert round_trips == 4
        assert [q.split("(")[0] for q in queries] == [
            "BEGIN",
            "SELECT set_config",
            "SELECT 1",
            "COMMIT",
        ]


def test_no_timeouts_configured_costs_nothing(
    make_database: MakeDatabase,
    bouncer_url: str,
    trace: Callable[[Engine], Trace],
) -> None:
    """With every managed timeout disabled, a unit sends only BEGIN, its statement, COMMIT."""
    database = make_database(
        url=bouncer_url,
        pgbouncer="transaction",
        pool_size=1,
        statement_timeout=0,
        lock_timeout=0,
        idle_in_transaction_timeout=0,
    )
    traced = trace(database.engine)
    with UnitOfWork(database) as unit:
        unit.session.execute(text("SELECT 1"))
    assert traced.take()[1][-3:] == ["BEGIN", "SELECT 1", "COMMIT"]


def test_session_state_is_warned_about_once(
    make_database: MakeDatabase, bouncer_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """LISTEN, session advisory locks and plain SET are logged once each; their safe forms not."""
    database = make_database(url=bouncer_url, pgbouncer="transaction")
    statements = [
        "LISTEN uow_test_channel",
        "SELECT pg_advisory_lock(42)",
        "SELECT pg_advisory_unlock(42)",
        "SET work_mem = '8MB'",
        "SET LOCAL work_mem = '8MB'",
        "SELECT pg_advisory_xact_lock(42)",
    ]
    with caplog.at_level(logging.WARNING, logger="uow"):
        for _ in range(2):
            with UnitOfWork(database) as unit:
                for statement in statements:
                    unit.session.execute(text(statement))
    warned = [r.getMessage() for r in caplog.records if "PgBouncer" in r.getMessage()]
    assert len(warned) == 4
    assert [m.rsplit("Statement: ", 1)[1] for m in warned] == statements[:4]
    assert "pg_advisory_xact_lock()" in warned[1]


def test_the_connection_budget_is_not_checked_against_the_server(
    make_database: MakeDatabase, bouncer_url: str, postgres_url: str
) -> None:
    """Pool sizes count connections to PgBouncer, so a budget past max_connections is fine."""
    huge = {"processes": 10_000, "pool_size": 5}
    direct = make_database(**huge)
    with pytest.raises(ConfigurationError, match="max_connections"), UnitOfWork(direct) as unit:
        unit.session.execute(text("SELECT 1"))
    behind = make_database(url=bouncer_url, pgbouncer="transaction", **huge)
    with UnitOfWork(behind) as unit:
        assert unit.session.execute(text("SELECT 1")).scalar_one() == 1


def test_session_mode_sets_timeouts_once_per_connection(
    make_database: MakeDatabase,
    session_bouncer: PgBouncer,
    postgres_url: str,
    trace: Callable[[Engine], Trace],
) -> None:
    """In session mode the timeouts are set when the connection opens, not per transaction."""
    url = session_bouncer.url_for(make_url(postgres_url).database or "")
    database = make_database(url=url, pgbouncer="session", pool_size=1, lock_timeout=4)
    traced = trace(database.engine)
    with UnitOfWork(database) as unit:
        assert _show(unit, "statement_timeout", "lock_timeout") == ["30s", "4s"]
    traced.take()
    with UnitOfWork(database) as unit:
        assert _show(unit, "lock_timeout") == ["4s"]
    assert traced.take()[1] == ["BEGIN", "SHOW lock_timeout", "COMMIT"]


def test_direct_settings_are_refused_by_pgbouncer(bouncer_url: str) -> None:
    """Why the setting exists: PgBouncer refuses the startup options a direct connection sends."""
    with pytest.raises(psycopg.OperationalError, match="unsupported startup parameter: options"):
        psycopg.connect(_client_dsn(bouncer_url), options="-c statement_timeout=1000").close()


@pytest.mark.parametrize(
    ("statement", "problem"),
    [
        ("LISTEN jobs", "LISTEN"),
        ("  unlisten *", "LISTEN"),
        ("SELECT pg_try_advisory_lock_shared(1)", "advisory"),
        ("set search_path = x", "SET without LOCAL"),
        ("SET SESSION statement_timeout = 1", "SET without LOCAL"),
        ("PREPARE p AS SELECT 1", "prepared statement"),
        ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", "WITH HOLD"),
        ("CREATE TEMP TABLE t (a int)", "temporary table"),
        ("SET LOCAL statement_timeout = 1", None),
        ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", None),
        ("SELECT pg_advisory_xact_lock(1)", None),
        ("CREATE TEMP TABLE t (a int) ON COMMIT DROP", None),
        ("/* SET x = 1 */ SELECT 1", None),
        ("SELECT 'LISTEN'", None),
    ],
)
def test_session_state_rules(statement: str, problem: Any) -> None:
    """Statements that leave state on the server connection are recognised, others are not."""
    reason = session_state_problem(statement)
    if problem is None:
        assert reason is None
    else:
        assert reason is not None
        assert problem in reason


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_async_units_get_the_same_treatment(
    make_database: MakeDatabase, bouncer_url: str, session_bouncer: PgBouncer, mode: str
) -> None:
    """AsyncUnitOfWork behind PgBouncer: timeouts set, and no prepared statements in
    transaction mode, from the same settings."""
    url = (
        bouncer_url
        if mode == "transaction"
        else session_bouncer.url_for(make_url(bouncer_url).database or "")
    )
    database = make_database(url=url, pgbouncer=mode, lock_timeout=4)

    async def check() -> None:
        try:
            for _ in range(8):
                async with AsyncUnitOfWork(database) as unit:
                    result = await unit.session.execute(text("SHOW lock_timeout"))
                    assert result.scalar_one() == "4s"
                    connection = await unit.session.connection()
                    raw = (await connection.get_raw_connection()).driver_connection
                    expected = None if mode == "transaction" else 5
                    assert raw.prepare_threshold == expected  # type: ignore[union-attr]
        finally:
            await database.dispose_async()

    asyncio.run(check())


def test_a_pgbouncer_restart_is_survived(make_database: MakeDatabase, postgres_url: str) -> None:
    """PgBouncer goes away and comes back: units fail cleanly meanwhile, then work again."""
    server = make_url(postgres_url)
    assert server.port and server.database
    with PgBouncer(server.port, server_host=server.host or "", password=server.password) as bouncer:
        database = make_database(
            url=bouncer.url_for(server.database), pgbouncer="transaction", pool_size=2
        )
        for _ in range(4):
            with UnitOfWork(database) as unit:
                unit.session.execute(text("SELECT 1"))
        bouncer.stop()
        with pytest.raises(UnitOfWorkError), UnitOfWork(database) as unit:
            unit.session.execute(text("SELECT 1"))
        bouncer.start()
        deadline = time.monotonic() + 10
        while True:
            try:
                with UnitOfWork(database) as unit:
                    assert unit.session.execute(text("SELECT 1")).scalar_one() == 1
                break
            except (DatabaseUnavailable, ConnectionLost):
                assert time.monotonic() < deadline, "no recovery within 10 s"
                time.sleep(0.05)
        assert database.status().checked_out == 0
