"""A unit of work costs no more round trips than a plain SQLAlchemy session makes.

Counted at the protocol level with libpq's trace (PQtrace): every round trip ends with
the server's ReadyForQuery message.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import Session

import uow
from tests.conftest import MakeDatabase
from tests.models import Item
from tests.protocol_trace import Trace
from uow import Database, UnitOfWork


@pytest.fixture
def plain_engine(postgres_url: str) -> Iterator[Engine]:
    engine = create_engine(postgres_url, pool_size=1, pool_pre_ping=True)
    yield engine
    engine.dispose()


def test_no_more_round_trips_than_a_plain_session(
    plain_engine: Engine, make_database: MakeDatabase, trace: Callable[[Engine], Trace]
) -> None:
    """A unit sends BEGIN, the statement, COMMIT; pre-ping's extra round trip is skipped."""
    plain = trace(plain_engine)
    database = make_database(pool_size=1)
    traced = trace(database.engine)
    for _ in range(2):  # the first pass opens the connections; compare the second
        plain.take()
        traced.take()
        with Session(plain_engine) as session, session.begin():
            session.execute(text("SELECT 1"))
        with UnitOfWork(database) as unit:
            unit.session.execute(text("SELECT 1"))
    assert plain.take() == (4, [";", "BEGIN", "SELECT 1", "COMMIT"])
    assert traced.take() == (3, ["BEGIN", "SELECT 1", "COMMIT"])


def select_1(database: Database, **options: Any) -> None:
    """One unit of work that runs SELECT 1."""
    with UnitOfWork(database, **options) as unit:
        unit.session.execute(text("SELECT 1"))


def traced_database(
    make_database: MakeDatabase, trace: Callable[[Engine], Trace], **settings: Any
) -> tuple[Database, Trace]:
    """A one-connection Database, traced, whose connection is open already (not counted)."""
    database = make_database(pool_size=1, **settings)
    traced = trace(database.engine)
    select_1(database)
    traced.take()
    return database, traced


def test_a_connection_idle_past_the_window_is_pinged(
    make_database: MakeDatabase, trace: Callable[[Engine], Trace]
) -> None:
    """After pool_pre_ping_idle seconds in the pool, a connection is pinged before use."""
    database, traced = traced_database(make_database, trace, pool_pre_ping_idle=0.2)
    time.sleep(0.3)
    select_1(database)
    assert traced.take()[1] == [";", "BEGIN", "SELECT 1", "COMMIT"]


def test_pre_ping_off_never_pings(
    make_database: MakeDatabase, trace: Callable[[Engine], Trace]
) -> None:
    """With pool_pre_ping=False, no ping is sent however long the connection idled."""
    database, traced = traced_database(
        make_database, trace, pool_pre_ping=False, pool_pre_ping_idle=0.1
    )
    time.sleep(0.2)
    select_1(database)
    assert traced.take()[1] == ["BEGIN", "SELECT 1", "COMMIT"]


def test_options_cost_no_round_trip(
    make_database: MakeDatabase, trace: Callable[[Engine], Trace]
) -> None:
    """readonly and isolation ride on BEGIN; an empty unit never touches the server."""
    database, traced = traced_database(make_database, trace)
    select_1(database, readonly=True, isolation="SERIALIZABLE")
    assert traced.take() == (
        3,
        ["BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY", "SELECT 1", "ROLLBACK"],
    )
    with UnitOfWork(database):
        pass
    assert traced.take() == (0, [])


def test_timeout_costs_exactly_one_round_trip(
    make_database: MakeDatabase, trace: Callable[[Engine], Trace]
) -> None:
    """timeout= adds one statement (set_config, with a bound value) per transaction."""
    database, traced = traced_database(make_database, trace)
    select_1(database, timeout=2)
    round_trips, _ = traced.take()
    assert round_trips == 4


@pytest.fixture
def items(admin: psycopg.Connection[Any]) -> Iterator[psycopg.Connection[Any]]:
    """The side connection, with the items table empty before and after the test."""
    admin.execute("TRUNCATE uow_test_items RESTART IDENTITY")
    yield admin
    admin.execute("TRUNCATE uow_test_items RESTART IDENTITY")


def insert_many(
    make_database: MakeDatabase, trace: Callable[[Engine], Trace], rows: Iterable[dict[str, Any]]
) -> tuple[int, list[str], list[str]]:
    """Run insert_many in a unit; return its count, and the COPY and INSERT statements sent."""
    database = make_database(pool_size=1)
    traced = trace(database.engine)
    with UnitOfWork(database) as unit:
        count = unit.repository(Item).insert_many(rows)
    _, queries = traced.take()
    return (
        count,
        [q for q in queries if q.startswith("COPY")],
        [q for q in queries if q.startswith("INSERT")],
    )


def test_insert_many_uses_copy_with_defaults_filled(
    make_database: MakeDatabase, trace: Callable[[Engine], Trace], items: psycopg.Connection[Any]
) -> None:
    """Rows of the same shape go through one COPY, with the Python default for omitted columns."""
    rows = ({"name": f"n{i}"} for i in range(3000))
    count, copies, inserts = insert_many(make_database, trace, rows)
    assert count == 3000
    assert copies == ['COPY "uow_test_items" ("name", "qty") FROM STDIN']
    assert not inserts
    row = items.execute("SELECT count(*), min(qty), max(qty), max(id) FROM uow_test_items")
    assert row.fetchone() == (3000, 0, 0, 3000)


def test_insert_many_falls_back_to_insert_for_mixed_rows(
    make_database: MakeDatabase, trace: Callable[[Engine], Trace], items: psycopg.Connection[Any]
) -> None:
    """Rows with different keys are inserted with multi-row INSERTs instead of COPY."""
    rows = [{"name": "a", "qty": 1}, {"name": "b"}]
    count, copies, inserts = insert_many(make_database, trace, rows)
    assert count == 2
    assert not copies
    assert inserts
    assert items.execute("SELECT name, qty FROM uow_test_items ORDER BY name").fetchall() == [
        ("a", 1),
        ("b", 0),
    ]


def test_update_where_is_one_plain_statement_when_nothing_is_loaded(
    make_database: MakeDatabase, trace: Callable[[Engine], Trace]
) -> None:
    """With no objects loaded, update_where sends a single UPDATE, without RETURNING."""
    database = make_database(pool_size=1)
    traced = trace(database.engine)
    with UnitOfWork(database) as unit:
        unit.repository(Item).update_where({"qty": Item.qty + 1}, Item.id == 1)
    _, queries = traced.take()
    updates = [q for q in queries if q.startswith("UPDATE")]
    assert len(updates) == 1
    assert "RETURNING" not in updates[0]


def test_get_by_is_one_select_limited_to_two_rows(
    make_database: MakeDatabase, trace: Callable[[Engine], Trace], admin: psycopg.Connection[Any]
) -> None:
    """get_by() sends one SELECT ... LIMIT 2: duplicates are seen without reading the table."""
    admin.execute("TRUNCATE uow_test_items RESTART IDENTITY")
    admin.execute(
        "INSERT INTO uow_test_items (name, qty) SELECT 'n' || i, 7 FROM generate_series(1, 50) i"
    )
    database = make_database(pool_size=1)
    traced = trace(database.engine)
    sent: list[tuple[str, Any]] = []

    @event.listens_for(database.engine, "before_cursor_execute")
    def record(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        sent.append((statement, parameters))

    with UnitOfWork(database) as unit:
        unit.session.execute(text("SELECT 1"))  # the connection's first use is not counted
        traced.take()
        sent.clear()
        assert unit.repository(Item).get_by(name="n3") is not None
        assert traced.take()[0] == 1
        with pytest.raises(uow.MultipleRowsFound):
            unit.repository(Item).get_by(qty=7)
        assert traced.take()[0] == 1
    for statement, parameters in sent:
        assert statement.rstrip().endswith("LIMIT %(param_1)s::INTEGER")
        assert parameters["param_1"] == 2
    assert len(sent) == 2
    admin.execute("TRUNCATE uow_test_items RESTART IDENTITY")
