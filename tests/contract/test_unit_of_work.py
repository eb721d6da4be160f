"""The unit-of-work contract, pinned rule by rule for the real UnitOfWork and the fake."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import IntegrityError

from tests.contract.conftest import MakeUnit
from tests.models import Item, ShopUnitOfWork
from uow import UsageError


def names(make_unit: MakeUnit) -> list[str]:
    with make_unit() as unit:
        return [item.name for item in unit.items.list(order_by=Item.name)]


def add(unit: ShopUnitOfWork, name: str, qty: int = 0) -> Item:
    item = unit.items.add(Item(name=name, qty=qty))
    unit.items.count()  # a query flushes: the row is really written before what follows
    return item


def test_clean_exit_commits(make_unit: MakeUnit) -> None:
    """Work done in a block that exits cleanly is visible in a new unit."""
    with make_unit() as unit:
        add(unit, "apple")
    assert names(make_unit) == ["apple"]


def test_exception_rolls_back_and_propagates(make_unit: MakeUnit) -> None:
    """An exception leaves nothing written and propagates unchanged."""
    error = ValueError("boom")
    with pytest.raises(ValueError) as info, make_unit() as unit:
        add(unit, "apple")
        raise error
    assert info.value is error
    assert names(make_unit) == []


def test_keyboard_interrupt_rolls_back_and_propagates(make_unit: MakeUnit) -> None:
    """KeyboardInterrupt (a BaseException) leaves nothing written and propagates."""
    with pytest.raises(KeyboardInterrupt), make_unit() as unit:
        add(unit, "apple")
        raise KeyboardInterrupt
    assert names(make_unit) == []


def test_exception_undoes_changes_to_loaded_objects(make_unit: MakeUnit) -> None:
    """An exception undoes attribute changes and deletes, not only inserts."""
    with make_unit() as unit:
        add(unit, "apple", qty=1)
        add(unit, "pear")
    with pytest.raises(ValueError), make_unit() as unit:
        apple = unit.items.named("apple")
        assert apple is not None
        apple.qty = 99
        pear = unit.items.named("pear")
        assert pear is not None
        unit.items.delete(pear)
        unit.items.count()
        raise ValueError
    with make_unit() as unit:
        assert [(i.name, i.qty) for i in unit.items.list(order_by=Item.name)] == [
            ("apple", 1),
            ("pear", 0),
        ]


def test_changes_to_loaded_objects_are_committed(make_unit: MakeUnit) -> None:
    """Changing an attribute of a loaded object is written on a clean exit."""
    with make_unit() as unit:
        add(unit, "apple", qty=1)
    with make_unit() as unit:
        apple = unit.items.named("apple")
        assert apple is not None
        apple.qty = 7
    with make_unit() as unit:
        apple = unit.items.named("apple")
        assert apple is not None
        assert apple.qty == 7


def test_rollback_then_exit_writes_nothing(make_unit: MakeUnit) -> None:
    """rollback() followed by a clean exit writes nothing."""
    with make_unit() as unit:
        add(unit, "apple")
        unit.rollback()
    assert names(make_unit) == []


def test_rollback_then_more_work_commits_only_the_later_work(make_unit: MakeUnit) -> None:
    """After rollback(), later work in the same block is committed on a clean exit."""
    with make_unit() as unit:
        add(unit, "apple")
        unit.rollback()
        add(unit, "pear")
    assert names(make_unit) == ["pear"]


def test_commit_keeps_work_when_the_block_fails_later(make_unit: MakeUnit) -> None:
    """commit() makes work permanent; a later exception undoes only what came after it."""
    with pytest.raises(ValueError), make_unit() as unit:
        add(unit, "apple")
        unit.commit()
        add(unit, "pear")
        raise ValueError
    assert names(make_unit) == ["apple"]


def test_savepoint_failure_keeps_outer_work(make_unit: MakeUnit) -> None:
    """An exception in a savepoint undoes only the savepoint's work; the outer work commits."""
    with make_unit() as unit:
        add(unit, "apple")
        with pytest.raises(ValueError), unit.savepoint():
            add(unit, "pear")
            raise ValueError
        add(unit, "plum")
    assert names(make_unit) == ["apple", "plum"]


def test_savepoint_failure_restores_loaded_objects(make_unit: MakeUnit) -> None:
    """A failed savepoint restores the attributes it changed to their values before it."""
    with make_unit() as unit:
        apple = add(unit, "apple", qty=1)
        apple.qty = 2
        with pytest.raises(ValueError), unit.savepoint():
            apple.qty = 3
            unit.items.count()
            raise ValueError
        assert apple.qty == 2
    with make_unit() as unit:
        assert [i.qty for i in unit.items.list()] == [2]


def test_savepoint_contains_a_unique_violation(make_unit: MakeUnit) -> None:
    """A constraint violation in a savepoint raises IntegrityError there; outer work survives."""
    with make_unit() as unit:
        add(unit, "apple")
        with pytest.raises(IntegrityError), unit.savepoint():
            unit.items.add(Item(name="apple"))
        add(unit, "pear")
    assert names(make_unit) == ["apple", "pear"]


def test_ids_are_not_reused_after_rollback(make_unit: MakeUnit) -> None:
    """Like a sequence, generated keys consumed by rolled-back work are not handed out again."""
    with pytest.raises(ValueError), make_unit() as unit:
        assert add(unit, "apple").id == 1
        raise ValueError
    with make_unit() as unit:
        assert add(unit, "pear").id == 2


def test_on_commit_runs_after_commit(make_unit: MakeUnit) -> None:
    """on_commit callbacks run in order once the block has committed, not before."""
    calls: list[str] = []
    with make_unit() as unit:
        add(unit, "apple")
        unit.on_commit(lambda: calls.append("first"))
        unit.on_commit(lambda: calls.append("second"))
        assert calls == []
    assert calls == ["first", "second"]


def test_on_commit_does_not_run_after_an_exception(make_unit: MakeUnit) -> None:
    """on_commit callbacks of a block that fails never run."""
    calls: list[str] = []
    with pytest.raises(ValueError), make_unit() as unit:
        unit.on_commit(lambda: calls.append("sent"))
        raise ValueError
    assert calls == []


def test_on_commit_does_not_run_after_rollback(make_unit: MakeUnit) -> None:
    """on_commit callbacks registered before rollback() never run, even on a clean exit."""
    calls: list[str] = []
    with make_unit() as unit:
        unit.on_commit(lambda: calls.append("before"))
        unit.rollback()
        unit.on_commit(lambda: calls.append("after"))
    assert calls == ["after"]


def test_on_commit_inside_a_failed_savepoint_does_not_run(make_unit: MakeUnit) -> None:
    """A callback registered in a savepoint that fails is dropped; the outer ones run."""
    calls: list[str] = []
    with make_unit() as unit:
        unit.on_commit(lambda: calls.append("outer"))
        with pytest.raises(ValueError), unit.savepoint():
            unit.on_commit(lambda: calls.append("inner"))
            raise ValueError
    assert calls == ["outer"]


def test_on_commit_after_commit_runs_even_if_the_block_fails_later(make_unit: MakeUnit) -> None:
    """Callbacks whose transaction committed with commit() run at exit despite a later error."""
    calls: list[str] = []
    with pytest.raises(ValueError), make_unit() as unit:
        unit.on_commit(lambda: calls.append("committed"))
        unit.commit()
        unit.on_commit(lambda: calls.append("rolled back"))
        raise ValueError
    assert calls == ["committed"]


def test_failing_on_commit_callback_does_not_stop_the_others(make_unit: MakeUnit) -> None:
    """A callback that raises is logged, the others still run, and its error propagates."""
    calls: list[str] = []

    def broken() -> None:
        raise RuntimeError("mail server down")

    with pytest.raises(RuntimeError, match="mail server down"), make_unit() as unit:
        add(unit, "apple")
        unit.on_commit(broken)
        unit.on_commit(lambda: calls.append("second"))
    assert calls == ["second"]
    assert names(make_unit) == ["apple"]


def test_readonly_never_commits(make_unit: MakeUnit) -> None:
    """A readonly unit that ends with changes raises UsageError and writes nothing."""
    with pytest.raises(UsageError, match="readonly"), make_unit(readonly=True) as unit:
        unit.items.add(Item(name="apple"))
    assert names(make_unit) == []


def test_readonly_reads_and_refuses_commit(make_unit: MakeUnit) -> None:
    """A readonly unit reads committed data, and commit() in it raises UsageError."""
    with make_unit() as unit:
        add(unit, "apple")
    with make_unit(readonly=True) as unit:
        assert unit.items.named("apple") is not None
        with pytest.raises(UsageError, match="readonly"):
            unit.commit()


def test_reentering_an_active_unit_raises(make_unit: MakeUnit) -> None:
    """Entering a unit that is already active raises UsageError; the outer block goes on."""
    with make_unit() as unit:
        add(unit, "apple")
        with pytest.raises(UsageError, match="already active"), unit:
            pass
        add(unit, "pear")
    assert names(make_unit) == ["apple", "pear"]


def test_unit_can_be_entered_again_after_exit(make_unit: MakeUnit) -> None:
    """The same instance can run another block once the first has ended."""
    unit = make_unit()
    with unit:
        add(unit, "apple")
    with unit:
        add(unit, "pear")
    assert names(make_unit) == ["apple", "pear"]


def test_repository_is_unusable_after_the_block(make_unit: MakeUnit) -> None:
    """A repository kept past its block raises UsageError instead of touching stale state."""
    with make_unit() as unit:
        items = unit.items
    with pytest.raises(UsageError, match="ended"):
        items.list()


def test_repository_for_a_model_is_the_declared_one(make_unit: MakeUnit) -> None:
    """repository(Model) returns the declared repository, the same object on each call."""
    with make_unit() as unit:
        assert unit.repository(Item) is unit.items
        assert unit.repository(Item) is unit.repository(Item)


def test_objects_read_in_a_readonly_unit_stay_readable(make_unit: MakeUnit) -> None:
    """Objects loaded in a readonly unit can be read after its block."""
    with make_unit() as unit:
        unit.items.add(Item(name="apple", qty=2))
    with make_unit(readonly=True) as unit:
        (item,) = unit.items.list()
    assert (item.name, item.qty) == ("apple", 2)


def test_repository_flush_assigns_keys(make_unit: MakeUnit) -> None:
    """Repository.flush() inserts pending objects so their keys are known before commit."""
    with make_unit() as unit:
        item = unit.items.add(Item(name="apple"))
        unit.items.flush()
        assert isinstance(item.id, int)
