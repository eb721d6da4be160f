"""Repository statements are built once per shape and reused with each call's own values."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import psycopg
import pytest
from sqlalchemy import bindparam, event, inspect, text, tuple_
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from tests.models import Item, ShopUnitOfWork
from uow import Database, UnitOfWork, _statements

FRUIT = [("apple", 3), ("pear", 8), ("plum", 5), ("kiwi", 0), ("fig", 12)]


@pytest.fixture
def shop(database: Database) -> Database:
    """The database with FRUIT stored (ids 1 to 5, in that order) and an empty cache."""
    with ShopUnitOfWork(database) as unit:
        unit.items.add_all([Item(name=name, qty=qty) for name, qty in FRUIT])
    _statements.clear()
    return database


@pytest.fixture
def sent(shop: Database) -> Iterator[list[tuple[str, Any]]]:
    """The statements and parameters sent from now on."""
    seen: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        seen.append((statement, parameters))

    event.listen(shop.engine, "before_cursor_execute", record)
    yield seen
    event.remove(shop.engine, "before_cursor_execute", record)


def quantities(database: Database) -> dict[str, int]:
    with ShopUnitOfWork(database) as unit:
        return {item.name: item.qty for item in unit.items.list()}


def test_update_where_reuses_one_statement_with_each_calls_values(
    shop: Database, sent: list[tuple[str, Any]]
) -> None:
    """Same shape, other values: one cached statement, and each call updates its own row."""
    for item_id, delta in [(1, 10), (2, 20), (3, 30)]:
        with ShopUnitOfWork(shop) as unit:
            assert unit.items.update_where({"qty": Item.qty + delta}, Item.id == item_id) == 1
    assert _statements.size() == 1
    assert quantities(shop) == {"apple": 13, "pear": 28, "plum": 35, "kiwi": 0, "fig": 12}
    updates = [statement for statement, _ in sent if statement.startswith("UPDATE")]
    assert len(set(updates)) == 1


def test_keyword_criteria_and_plain_values_are_bound(shop: Database) -> None:
    """update_where(values, id=...) and a None filter (IS NULL) each get their statement."""
    with ShopUnitOfWork(shop) as unit:
        assert unit.items.update_where({"qty": 1}, name="apple") == 1
        assert unit.items.update_where({"qty": 2}, name="pear") == 1
        assert unit.items.update_where({"qty": 3}, name=None) == 0
    assert _statements.size() == 2
    assert quantities(shop)["apple"] == 1
    assert quantities(shop)["pear"] == 2


def test_in_lists_of_any_length_share_a_statement(shop: Database) -> None:
    """An IN list is one expanding parameter: lists of other lengths reuse the statement."""
    with ShopUnitOfWork(shop) as unit:
        assert unit.items.count(Item.id.in_([1, 2])) == 2
        assert unit.items.count(Item.id.in_([1, 2, 3, 4])) == 4
        assert unit.items.count(tuple_(Item.id, Item.qty).in_([(1, 3), (2, 0)])) == 1
        assert unit.items.count(tuple_(Item.id, Item.qty).in_([(1, 3), (2, 8)])) == 2
    assert _statements.size() == 2


def test_select_operations_see_each_calls_values(shop: Database) -> None:
    """list, get_by, exists, count and stream: cached statements, the values of the call."""
    with ShopUnitOfWork(shop) as unit:
        for low, names in [(4, ["fig", "pear", "plum"]), (9, ["fig"])]:
            found = unit.items.list(Item.qty > low - 1, order_by=Item.name, limit=5, offset=0)
            assert [item.name for item in found] == names
            assert [i.name for i in unit.items.stream(Item.qty >= low, order_by=Item.name)] == names
            assert unit.items.count(Item.qty >= low) == len(names)
            assert unit.items.exists(Item.qty >= low)
        assert [i.name for i in unit.items.list(order_by=Item.id, limit=2, offset=1)] == [
            "pear",
            "plum",
        ]
        assert [i.name for i in unit.items.list(order_by=Item.id, limit=1, offset=3)] == ["kiwi"]
        assert unit.items.get_by(name="plum", for_update=True) is unit.items.get(3)
        assert unit.items.get_by(name="kiwi", for_update=True) is unit.items.get(4)
        assert not unit.items.exists(qty=99)
    assert _statements.size() == 7


def test_upsert_of_one_row_reuses_its_statement(shop: Database) -> None:
    """Single-row upserts share one statement; each inserts or updates its own row."""
    with ShopUnitOfWork(shop) as unit:
        (pear,) = unit.items.upsert({"name": "pear", "qty": 1}, conflict=["name"])
        (lime,) = unit.items.upsert({"name": "lime", "qty": 2}, conflict=["name"])
        assert (pear.id, pear.qty, lime.qty) == (2, 1, 2)
        assert len(unit.items.upsert([{"name": "a", "qty": 1}, {"name": "b", "qty": 2}])) == 2
    assert _statements.size() == 1


def test_delete_where_runs_as_core_when_nothing_is_loaded(shop: Database) -> None:
    """delete_where: a cached Core DELETE with nothing loaded, the ORM's when objects are."""
    with ShopUnitOfWork(shop) as unit:
        assert unit.items.delete_where(Item.id == 1) == 1
        assert unit.items.delete_where(Item.id == 2) == 1
        assert _statements.size() == 1
        plum = unit.items.get(3)
        assert plum is not None
        assert unit.items.delete_where(name="plum") == 1
        assert inspect(plum).was_deleted  # the ORM kept the loaded object in step
    assert set(quantities(shop)) == {"kiwi", "fig"}


def test_criteria_that_cannot_be_renamed_are_built_per_call(shop: Database) -> None:
    """A named bindparam or text() criterion runs as given and is never cached."""
    with ShopUnitOfWork(shop) as unit:
        named = Item.id == bindparam("wanted", 2)
        assert [i.name for i in unit.items.list(named)] == ["pear"]
        assert unit.items.count(text("qty > :low").bindparams(low=4)) == 3
        assert unit.items.update_where({"qty": Item.qty + 1}, named) == 1
    assert _statements.size() == 0


def test_the_cache_is_bounded(shop: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """Criteria made up from data cost CPU, never memory: the oldest shapes are dropped."""
    monkeypatch.setattr(_statements, "LIMIT", 3)
    with ShopUnitOfWork(shop) as unit:
        for width in range(1, 8):
            criteria = [Item.qty != value for value in range(width)]
            assert unit.items.count(*criteria) >= 0
            assert _statements.size() <= 3
        assert unit.items.count(Item.qty >= 5) == 3
    assert _statements.size() == 3


class StaffBase(DeclarativeBase):
    pass


class Staff(StaffBase):
    __tablename__ = "uow_test_staff"
    __mapper_args__: ClassVar[dict[str, Any]] = {
        "polymorphic_on": "kind",
        "polymorphic_identity": "staff",
    }
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str]
    level: Mapped[int] = mapped_column(default=0)


class Manager(Staff):
    __mapper_args__: ClassVar[dict[str, Any]] = {"polymorphic_identity": "manager"}


def test_an_inherited_model_updates_and_deletes_only_its_own_rows(
    database: Database, admin: psycopg.Connection[Any]
) -> None:
    """update_where and delete_where on a single-table subclass keep its discriminator."""
    admin.execute("DROP TABLE IF EXISTS uow_test_staff")
    admin.execute("CREATE TABLE uow_test_staff (id int PRIMARY KEY, kind text, level int)")
    admin.execute("INSERT INTO uow_test_staff VALUES (1, 'staff', 0), (2, 'manager', 0)")
    try:
        with UnitOfWork(database) as unit:
            managers = unit.repository(Manager)
            assert managers.update_where({"level": 5}, Staff.level == 0) == 1
            assert managers.delete_where(Staff.level == 0) == 0
        rows = admin.execute("SELECT id, level FROM uow_test_staff ORDER BY id").fetchall()
        assert rows == [(1, 0), (2, 5)]
    finally:
        admin.execute("DROP TABLE uow_test_staff")
