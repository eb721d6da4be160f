"""The repository contract, pinned method by method for the real Repository and the fake."""

from __future__ import annotations

import builtins
from typing import Any

import psycopg.errors
import pytest
from sqlalchemy import and_, or_, true
from sqlalchemy.exc import (
    IntegrityError,
    InvalidRequestError,
    MultipleResultsFound,
    ProgrammingError,
)

from tests.contract.conftest import MakeUnit
from tests.models import Account, Item
from uow import MultipleRowsFound, UsageError

FRUIT = [("apple", 3), ("pear", 8), ("plum", 5), ("kiwi", 0), ("fig", 12)]


@pytest.fixture
def make(make_unit: MakeUnit) -> MakeUnit:
    """make_unit, after a committed block has stored FRUIT (ids 1 to 5, in that order)."""
    with make_unit() as unit:
        unit.items.add_all([Item(name=name, qty=qty) for name, qty in FRUIT])
    return make_unit


def test_primary_key_is_assigned_at_flush(make_unit: MakeUnit) -> None:
    """add() leaves the key unset; the next query or the commit assigns 1, 2, ... in order."""
    with make_unit() as unit:
        apple, pear = Item(name="apple"), Item(name="pear")
        unit.items.add(apple)
        assert apple.id is None
        unit.items.count()
        unit.items.add(pear)
    assert (apple.id, pear.id) == (1, 2)


def test_column_default_is_applied(make_unit: MakeUnit) -> None:
    """A Python-side column default (qty=0) fills an attribute left unset."""
    with make_unit() as unit:
        apple = unit.items.add(Item(name="apple"))
    assert apple.qty == 0


def test_get(make: MakeUnit) -> None:
    """get() returns the object with that primary key, or None."""
    with make() as unit:
        pear = unit.items.get(2)
        assert pear is not None
        assert (pear.id, pear.name) == (2, "pear")
        assert unit.items.get(99) is None


def test_get_returns_the_same_object_in_one_unit(make: MakeUnit) -> None:
    """Within one unit, get() and list() hand out the same object for one row."""
    with make() as unit:
        assert unit.items.get(1) is unit.items.list(name="apple")[0]


def test_get_by_returns_the_one_match_or_none(make: MakeUnit) -> None:
    """get_by() finds the one object with these attribute values, or returns None."""
    with make() as unit:
        plum = unit.items.get_by(name="plum")
        assert plum is not None
        assert (plum.id, plum.qty) == (3, 5)
        assert plum is unit.items.get(3)
        assert unit.items.get_by(name="plum", qty=5) is plum
        assert unit.items.get_by(name="plum", qty=6) is None
        assert unit.items.get_by(name="lime") is None
        assert unit.items.get_by(name="fig", for_update=True) is unit.items.get(5)


def test_get_by_sees_objects_added_in_the_unit(make_unit: MakeUnit) -> None:
    """get_by() finds an object added earlier in the same unit (it is flushed first)."""
    with make_unit() as unit:
        lime = unit.items.add(Item(name="lime", qty=2))
        assert unit.items.get_by(name="lime") is lime
        assert lime.id is not None


def test_get_by_raises_when_several_rows_match(make: MakeUnit) -> None:
    """Several matching rows raise MultipleRowsFound, naming the model and the criteria."""
    with make() as unit:
        unit.items.add(Item(name="lime", qty=5))
        with pytest.raises(MultipleRowsFound, match=r"more than one Item has these qty") as info:
            unit.items.get_by(qty=5)
        assert isinstance(info.value, UsageError)
        assert isinstance(info.value, MultipleResultsFound)  # what SQLAlchemy code catches
        assert "5" not in str(info.value)  # names the criteria, never their values
        assert unit.items.get_by(qty=5, name="lime") is not None


def test_get_by_refuses_no_criteria_and_unknown_attributes(make: MakeUnit) -> None:
    """get_by() without criteria, or with an attribute the model lacks, raises UsageError."""
    with make() as unit:
        with pytest.raises(UsageError, match=r"get_by\(\) needs attribute=value criteria"):
            unit.items.get_by()
        with pytest.raises(UsageError, match=r"Item has no attribute 'colour'.*'name'"):
            unit.items.get_by(colour="red", name="plum")


def test_get_for_update(make: MakeUnit) -> None:
    """get_for_update() returns the object; nowait with skip_locked is refused."""
    with make() as unit:
        plum = unit.items.get_for_update(3)
        assert plum is not None
        assert plum.name == "plum"
        assert unit.items.get_for_update(99, skip_locked=True) is None
        with pytest.raises(UsageError, match="nowait or skip_locked"):
            unit.items.get_for_update(3, nowait=True, skip_locked=True)


def test_list_with_criteria(make: MakeUnit) -> None:
    """list() keeps the objects matching every criterion, combined with AND."""
    with make() as unit:
        found = unit.items.list(Item.qty > 2, Item.qty < 10, order_by=Item.id)
        assert [i.name for i in found] == ["apple", "pear", "plum"]
        found = unit.items.list(Item.name.in_(["fig", "kiwi", "lime"]), order_by=Item.id)
        assert [i.name for i in found] == ["kiwi", "fig"]
        either = or_(Item.qty == 0, and_(Item.qty > 10, Item.name != "pear"))
        assert [i.name for i in unit.items.list(either, order_by=Item.id)] == ["kiwi", "fig"]
        assert [i.name for i in unit.items.list(~(Item.qty >= 3), order_by=Item.id)] == ["kiwi"]
        assert unit.items.list(Item.name.is_(None)) == []
        assert len(unit.items.list(Item.name.is_not(None))) == 5


def test_list_by_equality(make: MakeUnit) -> None:
    """Keyword arguments are equality filters, combined with criteria."""
    with make() as unit:
        assert [i.id for i in unit.items.list(name="plum")] == [3]
        assert unit.items.list(Item.qty > 5, name="plum") == []
        with pytest.raises(UsageError, match="colour"):
            unit.items.list(colour="red")


def test_list_order_by(make: MakeUnit) -> None:
    """order_by takes attributes, .desc() and several keys."""
    with make() as unit:
        assert [i.qty for i in unit.items.list(order_by=Item.qty.desc())] == [12, 8, 5, 3, 0]
        assert [i.name for i in unit.items.list(order_by=Item.name.asc())] == [
            "apple",
            "fig",
            "kiwi",
            "pear",
            "plum",
        ]
        unit.items.add(Item(name="lime", qty=5))
        found = unit.items.list(order_by=[Item.qty.desc(), Item.name.desc()], limit=4)
        assert [i.name for i in found] == ["fig", "pear", "plum", "lime"]


def test_list_limit_and_offset(make: MakeUnit) -> None:
    """limit and offset page through an ordered list."""
    with make() as unit:
        page = unit.items.list(order_by=Item.id, limit=2, offset=1)
        assert [i.id for i in page] == [2, 3]
        assert [i.id for i in unit.items.list(order_by=Item.id, offset=4)] == [5]
        assert [i.id for i in unit.items.list(order_by=Item.id, limit=2)] == [1, 2]


def test_list_for_update(make: MakeUnit) -> None:
    """for_update=True returns the same objects."""
    with make() as unit:
        assert [i.id for i in unit.items.list(Item.qty > 4, order_by=Item.id, for_update=True)] == [
            2,
            3,
            5,
        ]


def test_count(make: MakeUnit) -> None:
    """count() counts the matching rows, including objects added but not yet committed."""
    with make() as unit:
        assert unit.items.count() == 5
        assert unit.items.count(Item.qty >= 5) == 3
        assert unit.items.count(name="pear") == 1
        unit.items.add(Item(name="lime"))
        assert unit.items.count() == 6


def test_exists(make: MakeUnit) -> None:
    """exists() tells whether any row matches."""
    with make() as unit:
        assert unit.items.exists(name="fig")
        assert unit.items.exists(Item.qty > 10)
        assert not unit.items.exists(Item.qty > 100)


def test_delete(make: MakeUnit) -> None:
    """delete() removes a stored object at commit."""
    with make() as unit:
        pear = unit.items.get(2)
        assert pear is not None
        unit.items.delete(pear)
    with make() as unit:
        assert unit.items.get(2) is None
        assert unit.items.count() == 4


def test_delete_of_an_unsaved_object_raises(make_unit: MakeUnit) -> None:
    """Deleting an object that was never stored raises InvalidRequestError."""
    with make_unit() as unit, pytest.raises(InvalidRequestError, match="not persisted"):
        unit.items.delete(Item(name="ghost"))


def test_insert_many(make_unit: MakeUnit) -> None:
    """insert_many() inserts rows in batches, applies defaults and returns the row count."""
    rows = [{"name": f"item-{n}", "qty": n} for n in range(7)] + [{"name": "no-qty"}]
    with make_unit() as unit:
        assert unit.items.insert_many(rows, batch_size=3) == 8
        with pytest.raises(UsageError, match="batch_size"):
            unit.items.insert_many(rows, batch_size=0)
    with make_unit() as unit:
        assert unit.items.count() == 8
        assert [i.id for i in unit.items.list(order_by=Item.id)] == list(range(1, 9))
        no_qty = unit.items.named("no-qty")
        assert no_qty is not None
        assert no_qty.qty == 0


def test_upsert_inserts_then_updates(make_unit: MakeUnit) -> None:
    """upsert() inserts a new row, then updates it on a key conflict, returning the objects."""
    with make_unit() as unit:
        (apple,) = unit.items.upsert({"id": 1, "name": "apple", "qty": 1})
        assert (apple.id, apple.name, apple.qty) == (1, "apple", 1)
    with make_unit() as unit:
        found = unit.items.upsert([{"id": 1, "name": "apple", "qty": 5}, {"id": 2, "name": "fig"}])
        assert [(i.id, i.qty) for i in found] == [(1, 5), (2, 0)]
    with make_unit() as unit:
        assert [(i.name, i.qty) for i in unit.items.list(order_by=Item.id)] == [
            ("apple", 5),
            ("fig", 0),
        ]


def test_upsert_updates_loaded_objects(make: MakeUnit) -> None:
    """upsert() returns the unit's own object for an updated row, with the new values."""
    with make() as unit:
        pear = unit.items.get(2)
        (updated,) = unit.items.upsert({"id": 2, "name": "pear", "qty": 80}, update=["qty"])
        assert updated is pear
        assert pear is not None
        assert pear.qty == 80


def test_upsert_on_another_unique_constraint(make: MakeUnit) -> None:
    """conflict= names the unique constraint to match rows on."""
    with make() as unit:
        (plum,) = unit.items.upsert({"name": "plum", "qty": 50}, conflict=["name"])
        assert (plum.id, plum.qty) == (3, 50)
        assert unit.items.count() == 5


def test_upsert_do_nothing(make: MakeUnit) -> None:
    """update=() inserts new rows only: existing ones stay as they were and are not returned."""
    with make() as unit:
        rows = [{"id": 1, "name": "apple", "qty": 100}, {"id": 6, "name": "lime", "qty": 1}]
        found = unit.items.upsert(rows, update=())
        assert [i.name for i in found] == ["lime"]
    with make() as unit:
        apple = unit.items.get(1)
        assert apple is not None
        assert apple.qty == 3
        assert unit.items.count() == 6


def test_upsert_without_a_matching_constraint_raises(make: MakeUnit) -> None:
    """conflict= on columns that no unique constraint covers raises ProgrammingError."""
    with make() as unit, pytest.raises(ProgrammingError) as info:
        unit.items.upsert({"name": "plum", "qty": 5}, conflict=["qty"])
    assert isinstance(info.value.orig, psycopg.errors.InvalidColumnReference)


def test_upsert_touching_a_row_twice_raises(make_unit: MakeUnit) -> None:
    """Two rows of one upsert updating the same row raise ProgrammingError (cardinality)."""
    rows = [{"id": 1, "name": "apple"}, {"id": 1, "name": "pear"}]
    with make_unit() as unit, pytest.raises(ProgrammingError) as info:
        unit.items.upsert(rows)
    assert isinstance(info.value.orig, psycopg.errors.CardinalityViolation)


def test_update_where(make: MakeUnit) -> None:
    """update_where() returns the row count, and objects already loaded see the new values."""
    with make() as unit:
        fig = unit.items.get(5)
        assert fig is not None
        assert unit.items.update_where({"qty": 1}, Item.qty > 7) == 2
        assert fig.qty == 1
        assert unit.items.update_where({"qty": Item.qty + 10}, name="kiwi") == 1
        assert unit.items.update_where({"qty": 0}, name="lime") == 0
        with pytest.raises(UsageError, match="colour"):
            unit.items.update_where({"colour": "red"}, name="kiwi")
    with make() as unit:
        assert [i.qty for i in unit.items.list(order_by=Item.id)] == [3, 1, 5, 10, 1]


def test_delete_where(make: MakeUnit) -> None:
    """delete_where() deletes matching rows and returns the count; it needs a criterion."""
    with make() as unit:
        assert unit.items.delete_where(Item.qty < 5) == 2
        assert unit.items.delete_where(name="pear") == 1
        with pytest.raises(UsageError, match="criterion"):
            unit.items.delete_where()
    with make() as unit:
        assert [i.name for i in unit.items.list(order_by=Item.id)] == ["plum", "fig"]
        assert unit.items.delete_where(true()) == 2
        assert unit.items.count() == 0


def test_stream(make: MakeUnit) -> None:
    """stream() yields every matching object, in order."""
    with make() as unit:
        streamed = unit.items.stream(order_by=Item.qty, batch_size=2)
        assert [i.qty for i in streamed] == [0, 3, 5, 8, 12]
        assert [i.name for i in unit.items.stream(Item.qty > 7, order_by=Item.id)] == [
            "pear",
            "fig",
        ]


def test_custom_repository_method(make: MakeUnit) -> None:
    """A method of the declared repository class (ItemRepository.named) works."""
    with make() as unit:
        fig = unit.items.named("fig")
        assert fig is not None
        assert fig.qty == 12
        assert unit.items.named("lime") is None


def test_plain_repository(make_unit: MakeUnit) -> None:
    """A Repository[Account] declaration and repository(Model) give working repositories."""
    with make_unit() as unit:
        unit.accounts.add(Account(owner="ann", balance=10))
        assert unit.repository(Account).count(owner="ann") == 1


def test_duplicate_primary_key_raises(make: MakeUnit) -> None:
    """A second object with a stored primary key raises IntegrityError; nothing is written."""
    with pytest.raises(IntegrityError) as info, make() as unit:
        unit.items.add(Item(id=1, name="lime"))
    assert isinstance(info.value.orig, psycopg.errors.UniqueViolation)
    with make() as unit:
        assert unit.items.count() == 5


def test_duplicate_unique_value_raises(make: MakeUnit) -> None:
    """A value already taken in a unique column raises IntegrityError (UniqueViolation)."""
    with pytest.raises(IntegrityError) as info, make() as unit:
        unit.items.insert_many([{"name": "apple"}])
    assert isinstance(info.value.orig, psycopg.errors.UniqueViolation)


def test_update_breaking_a_unique_constraint_raises_at_commit(make: MakeUnit) -> None:
    """Renaming an object to a taken name raises IntegrityError by commit and writes nothing."""
    with pytest.raises(IntegrityError), make() as unit:
        pear = unit.items.get(2)
        assert pear is not None
        pear.name = "apple"
    with make() as unit:
        assert unit.items.named("pear") is not None


def test_missing_not_null_value_raises(make_unit: MakeUnit) -> None:
    """Leaving a NOT NULL column without a value raises IntegrityError (NotNullViolation)."""
    with pytest.raises(IntegrityError) as info, make_unit() as unit:
        unit.items.add(Item(qty=1))
    assert isinstance(info.value.orig, psycopg.errors.NotNullViolation)


def test_insert_many_refuses_unknown_keys(make_unit: MakeUnit) -> None:
    """insert_many() with a key that is not a column raises UsageError and inserts nothing."""
    with make_unit() as unit:
        with pytest.raises(UsageError, match="bogus"):
            unit.items.insert_many([{"name": "apple", "bogus": 1}])
        assert unit.items.count() == 0


def test_flush_assigns_keys_without_committing(make_unit: MakeUnit) -> None:
    """flush() sends pending objects (keys assigned), and a later error still rolls them back."""
    with pytest.raises(RuntimeError), make_unit() as unit:
        item = unit.items.add(Item(name="apple"))
        assert item.id is None
        unit.flush()
        assert item.id is not None
        raise RuntimeError
    with make_unit() as unit:
        assert unit.items.count() == 0


# -- bad input: uow's UsageError naming the bad key or row, and nothing written -----------


def test_unknown_attribute_names_raise_usage_error(make: MakeUnit) -> None:
    """An equality filter on an attribute the model lacks raises UsageError in every method."""
    with make() as unit:
        items = unit.items
        calls = {
            "list": lambda: items.list(nope=1),
            "count": lambda: items.count(nope=1),
            "exists": lambda: items.exists(nope=1),
            "get_by": lambda: items.get_by(nope=1),
            "update_where": lambda: items.update_where({"qty": 1}, nope=1),
            "delete_where": lambda: items.delete_where(nope=1),
            "stream": lambda: builtins.list(items.stream(nope=1)),
        }
        for method, call in calls.items():
            with pytest.raises(UsageError, match=f"{method}: Item has no attribute 'nope'"):
                call()
    with make() as unit:
        assert [(i.name, i.qty) for i in unit.items.list(order_by=Item.id)] == FRUIT


def test_unknown_columns_raise_usage_error(make: MakeUnit) -> None:
    """Values, rows, conflict= and update= keyed by a non-column raise UsageError naming it."""
    with make() as unit:
        items = unit.items
        calls = {
            "upsert": lambda: items.upsert({"nope": 1}),
            "upsert conflict=": lambda: items.upsert({"name": "plum"}, conflict=["nope"]),
            "upsert update=": lambda: items.upsert({"name": "plum"}, update=["nope"]),
            "update_where": lambda: items.update_where({"nope": 1}, name="plum"),
            "insert_many": lambda: items.insert_many([{"name": "lime"}, {"nope": 1}]),
        }
        for method, call in calls.items():
            with pytest.raises(UsageError, match=f"{method}: Item has no column 'nope'; its col"):
                call()
        with pytest.raises(UsageError, match="conflict= takes a sequence"):
            items.upsert({"name": "plum"}, conflict="name")  # type: ignore[arg-type]
    with make() as unit:
        assert [(i.name, i.qty) for i in unit.items.list(order_by=Item.id)] == FRUIT


def test_rows_that_are_not_mappings_raise_usage_error(make: MakeUnit) -> None:
    """A row that is not a mapping (a tuple, None) raises UsageError naming its position."""
    bad: list[Any] = [{"name": "lime"}, ("name", "x")]
    with make() as unit:
        items = unit.items
        with pytest.raises(UsageError, match="insert_many: row 1 is a tuple, not a mapping"):
            items.insert_many(bad)
        with pytest.raises(UsageError, match="insert_many: row 0 is a NoneType, not a mapping"):
            items.insert_many([None])  # type: ignore[list-item]
        with pytest.raises(UsageError, match="upsert: row 1 is a tuple, not a mapping"):
            items.upsert(bad)
        with pytest.raises(UsageError, match="for one row, pass \\[row\\]"):
            items.insert_many({"name": "lime"})
        with pytest.raises(UsageError, match="not a NoneType"):
            items.insert_many(None)  # type: ignore[arg-type]
        with pytest.raises(UsageError, match="not a NoneType"):
            items.upsert(None)  # type: ignore[arg-type]
        with pytest.raises(UsageError, match="not a list"):
            items.update_where([("qty", 1)], name="plum")  # type: ignore[arg-type]
    with make() as unit:
        assert [(i.name, i.qty) for i in unit.items.list(order_by=Item.id)] == FRUIT


def test_bad_primary_keys_raise_usage_error(make: MakeUnit) -> None:
    """get() and get_for_update() with None or a key of the wrong shape raise UsageError."""
    with make() as unit:
        items = unit.items
        for get in (items.get, items.get_for_update):
            with pytest.raises(UsageError, match=r"\(None\): no row has a NULL primary key"):
                get(None)
            with pytest.raises(UsageError, match="2 values given; Item's primary key is \\(id\\)"):
                get((1, 2))
            with pytest.raises(UsageError, match="the keys 'nope' do not match"):
                get({"nope": 1})
        assert items.get({"id": 2}) is items.get((2,)) is items.get(2)


def test_objects_of_another_model_raise_usage_error(make: MakeUnit) -> None:
    """add(), add_all() and delete() refuse None and objects of another model."""
    with make() as unit:
        items = unit.items
        with pytest.raises(UsageError, match="add: got a NoneType; this repository holds Item"):
            items.add(None)  # type: ignore[arg-type]
        with pytest.raises(UsageError, match="add_all: got a Account"):
            items.add_all([Item(name="lime"), Account(owner="ann")])  # type: ignore[list-item]
        with pytest.raises(UsageError, match="delete: got a Account"):
            items.delete(Account(owner="ann"))  # type: ignore[arg-type]
    with make() as unit:
        assert unit.items.count() == 5
        assert unit.accounts.count() == 0


def test_bad_input_messages_never_show_values(make: MakeUnit) -> None:
    """Errors about bad input name keys and positions, never the values (they may be secrets)."""
    with make() as unit:
        items = unit.items
        calls = [
            lambda: items.insert_many([{"name": "s3cr3t-value", "nope": 1}]),
            lambda: items.upsert([{"name": "s3cr3t-value"}, ("s3cr3t-value",)]),
            lambda: items.get_by(nope="s3cr3t-value"),
            lambda: items.update_where({"nope": "s3cr3t-value"}),
        ]
        for call in calls:
            with pytest.raises(UsageError) as info:
                call()
            assert "s3cr3t" not in str(info.value)
