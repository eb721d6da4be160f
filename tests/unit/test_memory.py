"""Behaviour of the in-memory fake that the contract suite cannot pin (no database here)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import JSON, String, func
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import uow
from tests.models import Account, Item, ItemRepository, ShopUnitOfWork
from uow import Repository, UnitOfWork, UsageError
from uow.testing import FakeUnitOfWork, InMemoryRepository, InMemoryStore, fake


class Base(DeclarativeBase):
    pass


def _needs_context(context: Any) -> str:
    return str(context.get_current_parameters()["title"])


class Note(Base):
    __tablename__ = "memory_test_notes"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str | None] = mapped_column(String(50))
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    kind: Mapped[str] = mapped_column(default=lambda: "plain")


class Slug(Base):
    __tablename__ = "memory_test_slugs"

    lang: Mapped[str] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(primary_key=True)
    label: Mapped[str | None] = mapped_column(default=_needs_context)


class LoudItemRepository(ItemRepository):
    def add(self, obj: Item) -> Item:
        obj.name = obj.name.upper()
        return super().add(obj)


class Shop(ShopUnitOfWork):
    loud: LoudItemRepository
    notes: Repository[Note]

    def __init__(self, *args: Any, greeting: str = "hello", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.greeting = greeting

    def restock(self, name: str, qty: int) -> int:
        return self.items.update_where({"qty": Item.qty + qty}, name=name)


def test_fake_is_an_instance_of_the_class_and_keeps_its_methods() -> None:
    """fake(Cls) is a Cls and a FakeUnitOfWork whose own methods and __init__ still run."""
    unit = fake(Shop, greeting="hi")
    assert isinstance(unit, Shop)
    assert isinstance(unit, FakeUnitOfWork)
    assert unit.greeting == "hi"
    with unit:
        unit.items.add(Item(name="apple", qty=1))
    with unit:
        assert unit.restock("apple", 4) == 1
        assert unit.items.named("apple") is not None
    assert type(fake(Shop)) is type(unit)  # the dynamic class is built once


def test_fake_of_the_base_class() -> None:
    """fake(UnitOfWork) is a plain FakeUnitOfWork; the real constructor's checks still apply."""
    assert type(fake(UnitOfWork)) is FakeUnitOfWork
    assert fake(UnitOfWork, isolation="serializable").isolation == "SERIALIZABLE"
    with pytest.raises(UsageError, match="isolation"):
        fake(UnitOfWork, isolation="chaos")


def test_declared_repository_keeps_its_overrides() -> None:
    """A declared repository's own overrides win over the in-memory base methods."""
    with fake(Shop) as unit:
        unit.loud.add(Item(name="apple"))
        assert isinstance(unit.loud, LoudItemRepository)
        assert isinstance(unit.loud, InMemoryRepository)
        assert [i.name for i in unit.items.list()] == ["APPLE"]
        assert unit.loud.named("APPLE") is not None


def test_committed_tells_whether_the_unit_committed() -> None:
    """committed stays False through rollbacks and readonly units, and turns True on commit."""
    unit = fake(ShopUnitOfWork)
    assert isinstance(unit, FakeUnitOfWork)  # narrows the type for mypy: committed, store
    with pytest.raises(ValueError), unit:
        raise ValueError
    with fake(ShopUnitOfWork, store=unit.store, readonly=True):
        pass
    assert not unit.committed
    with unit:
        pass
    assert unit.committed


def test_session_and_database_raise_usage_error() -> None:
    """A fake has no session: the unit's and the repository's session raise UsageError."""
    unit = fake(ShopUnitOfWork)
    with unit:
        with pytest.raises(UsageError, match="no session"):
            unit.session  # noqa: B018
        with pytest.raises(UsageError, match="no session"):
            unit.items.session  # noqa: B018
        with pytest.raises(UsageError, match="no database"):
            unit.database  # noqa: B018


def test_inactive_unit_refuses_work() -> None:
    """commit, rollback, on_commit and repository() outside the block raise UsageError."""
    unit = fake(ShopUnitOfWork)
    for call in (unit.commit, unit.rollback, lambda: unit.on_commit(print)):
        with pytest.raises(UsageError, match="not active"):
            call()
    with pytest.raises(UsageError, match="not active"):
        unit.repository(Item)


@pytest.mark.parametrize(
    "criterion",
    [Item.name.like("a%"), func.lower(Item.name) == "apple", Account.balance > 0],
    ids=["like", "function", "other-model"],
)
def test_unsupported_criterion_raises_usage_error(criterion: Any) -> None:
    """A criterion the ORM evaluator cannot run in Python raises UsageError naming it."""
    with fake(ShopUnitOfWork) as unit, pytest.raises(UsageError, match="cannot evaluate"):
        unit.items.list(criterion)


def test_unsupported_order_by_raises_usage_error() -> None:
    """An order_by the evaluator cannot run (a string, a SQL function) raises UsageError."""
    with fake(ShopUnitOfWork) as unit:
        unit.items.add(Item(name="apple"))
        with pytest.raises(UsageError):
            unit.items.list(order_by="name")
        with pytest.raises(UsageError, match="cannot evaluate"):
            unit.items.list(order_by=func.random())


def test_nulls_sort_as_in_postgresql() -> None:
    """NULL sorts last ascending and first descending, unless nulls_first/nulls_last says."""
    with fake(Shop) as unit:
        unit.notes.add_all([Note(title="b"), Note(title=None), Note(title="a")])
        assert [n.title for n in unit.notes.list(order_by=Note.title)] == ["a", "b", None]
        assert [n.title for n in unit.notes.list(order_by=Note.title.desc())] == [None, "b", "a"]
        first = unit.notes.list(order_by=Note.title.asc().nulls_first())
        assert [n.title for n in first] == [None, "a", "b"]
        last = unit.notes.list(order_by=Note.title.desc().nulls_last())
        assert [n.title for n in last] == ["b", "a", None]
        assert [n.id for n in unit.notes.list(Note.title > "a")] == [1]  # NULL never matches


def test_callable_defaults_and_in_place_changes_roll_back() -> None:
    """Callable defaults apply; rollback undoes in-place changes to mutable (JSON) values."""
    unit = fake(Shop)
    with unit:
        note = unit.notes.add(Note(title="x"))
    assert (note.kind, note.tags) == ("plain", [])
    with pytest.raises(ValueError), unit:
        note.tags.append("urgent")
        raise ValueError
    assert note.tags == []


def test_default_that_needs_an_execution_context_raises_usage_error() -> None:
    """A default reading SQLAlchemy's execution context cannot run in memory: UsageError."""
    with fake(UnitOfWork) as unit:
        unit.repository(Slug).add(Slug(lang="en", slug="home"))
        with pytest.raises(UsageError, match="execution context"):
            unit.repository(Slug).count()


def test_composite_primary_key_without_sequence() -> None:
    """Composite keys work with get() by tuple or mapping; a key left None is a NOT NULL error."""
    with fake(UnitOfWork) as unit:
        slugs = unit.repository(Slug)
        slugs.add(Slug(lang="en", slug="home", label="Home"))
        assert slugs.get(("en", "home")) is slugs.get({"lang": "en", "slug": "home"})
        assert slugs.get(("fr", "home")) is None
        slugs.add(Slug(lang="fr", label="Accueil"))
        with pytest.raises(IntegrityError, match="not-null"):
            slugs.count()


def test_check_constraints_are_not_emulated() -> None:
    """Documented gap: a CHECK constraint (balance >= 0) is not enforced by the fake."""
    store = InMemoryStore()
    with fake(ShopUnitOfWork, store=store) as unit:
        unit.accounts.add(Account(owner="ann", balance=-5))
    with fake(ShopUnitOfWork, store=store) as unit:
        assert unit.accounts.count(Account.balance < 0) == 1


def test_fakes_share_a_store() -> None:
    """Fakes built on one store see each other's committed data, one at a time."""
    store = InMemoryStore()
    with fake(ShopUnitOfWork, store=store) as unit:
        unit.items.add(Item(name="apple"))
    with fake(Shop, store=store) as other:
        assert other.items.named("apple") is not None
        with pytest.raises(UsageError, match="same InMemoryStore"), fake(Shop, store=store):
            pass


def test_standalone_repository() -> None:
    """InMemoryRepository works on a store without a unit of work (every write is kept)."""
    store = InMemoryStore()
    items = InMemoryRepository(store, Item)
    items.add(Item(name="apple"))
    assert [i.id for i in items.list()] == [1]
    with fake(ShopUnitOfWork, store=store) as unit:
        assert unit.items.count() == 1
    with pytest.raises(UsageError, match="does not know its model"):
        InMemoryRepository(store)


def test_run_transaction_retries_a_fake_unit_of_work() -> None:
    """Domain code retried by run_transaction runs again on a fake, keeping only the last try."""
    store = InMemoryStore()
    attempts: list[int] = []

    def deposit(unit: ShopUnitOfWork) -> int:
        attempts.append(1)
        unit.accounts.add(Account(owner=f"try-{len(attempts)}", balance=len(attempts)))
        if len(attempts) < 3:
            raise uow.SerializationFailure("conflict (SQLSTATE 40001)")
        return len(attempts)

    def unit_of_work(store_: InMemoryStore | None, **options: Any) -> ShopUnitOfWork:
        return fake(ShopUnitOfWork, store=store_, **options)

    assert uow.run_transaction(deposit, unit_of_work=unit_of_work, database=store) == 3  # type: ignore[arg-type]
    with fake(ShopUnitOfWork, store=store, readonly=True) as unit:
        assert [a.owner for a in unit.accounts.list()] == ["try-3"]
