"""The unit-of-work contract for AsyncUnitOfWork on PostgreSQL, pinned rule by rule.

The same rules as test_unit_of_work.py pins for the sync UnitOfWork, with the task in
place of the thread. Each test runs one scenario in a fresh event loop; what a unit committed is
read from the ``admin`` side connection, outside every pool. The ``adb`` fixture checks
at teardown that nothing is left checked out on the asyncio pool.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import psycopg
import psycopg.errors
import pytest
from sqlalchemy import event, text, true
from sqlalchemy.exc import DBAPIError, IntegrityError

import uow
from tests.conftest import MakeDatabase, run
from tests.models import Item
from uow import AsyncRepository, AsyncUnitOfWork, Database, UsageError

Admin = psycopg.Connection[Any]


class Shop(AsyncUnitOfWork):
    items: AsyncRepository[Item]


class Boom(Exception):
    """The application's own error, raised inside a block."""


def committed(admin: Admin) -> list[str]:
    """The item names on the server, as a connection outside the application sees them."""
    return [name for (name,) in admin.execute("SELECT name FROM uow_test_items ORDER BY name")]


async def add(unit: Shop, name: str, qty: int = 0) -> Item:
    """Add an item and flush it: the row is really written before what follows."""
    item = unit.items.add(Item(name=name, qty=qty))
    await unit.flush()
    return item


async def scalar(unit: AsyncUnitOfWork, sql: str) -> Any:
    return (await unit.session.execute(text(sql))).scalar_one()


# -- ending a block ---------------------------------------------------------------------


def test_clean_exit_commits(adb: Database, admin: Admin) -> None:
    """A block that exits cleanly commits: the rows are visible from another connection."""

    async def scenario() -> list[str]:
        async with Shop(adb) as unit:
            await add(unit, "apple")
            return committed(admin)  # inside the block: not yet

    assert run(scenario()) == []
    assert committed(admin) == ["apple"]


def test_exception_rolls_back_and_propagates_unchanged(adb: Database, admin: Admin) -> None:
    """An exception leaves nothing written and propagates as the same object."""
    error = Boom("boom")

    async def scenario() -> None:
        async with Shop(adb) as unit:
            await add(unit, "apple")
            raise error

    with pytest.raises(Boom) as info:
        run(scenario())
    assert info.value is error
    assert committed(admin) == []


def test_keyboard_interrupt_rolls_back_and_propagates(adb: Database, admin: Admin) -> None:
    """KeyboardInterrupt (a BaseException) raised in the block rolls back and propagates."""

    async def scenario() -> str:
        try:
            async with Shop(adb) as unit:
                await add(unit, "apple")
                raise KeyboardInterrupt
        except KeyboardInterrupt:
            return "propagated"
        return "swallowed"

    assert run(scenario()) == "propagated"
    assert committed(admin) == []


def test_cancelled_task_rolls_back(adb: Database, admin: Admin) -> None:
    """A task cancelled inside its block rolls back, and ends cancelled (CancelledError)."""

    async def scenario() -> bool:
        inside = asyncio.Event()

        async def body() -> None:
            async with Shop(adb) as unit:
                await add(unit, "apple")
                inside.set()
                await asyncio.sleep(60)

        task = asyncio.create_task(body())
        await inside.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return task.cancelled()

    assert run(scenario())
    assert committed(admin) == []


def test_commit_keeps_work_when_the_block_fails_later(adb: Database, admin: Admin) -> None:
    """commit() makes work permanent; a later exception undoes only what came after it."""

    async def scenario() -> None:
        async with Shop(adb) as unit:
            await add(unit, "apple")
            await unit.commit()
            await add(unit, "pear")
            raise Boom

    with pytest.raises(Boom):
        run(scenario())
    assert committed(admin) == ["apple"]


def test_rollback_discards(adb: Database, admin: Admin) -> None:
    """rollback() discards the work so far; only later work in the block is committed."""

    async def scenario() -> None:
        async with Shop(adb) as unit:
            await add(unit, "apple")
            await unit.rollback()
        async with Shop(adb) as unit:
            await add(unit, "pear")
            await unit.rollback()
            await add(unit, "plum")

    run(scenario())
    assert committed(admin) == ["plum"]


# -- how the transaction runs -----------------------------------------------------------


def test_readonly_refuses_writes(adb: Database, admin: Admin) -> None:
    """In a readonly unit the server refuses a write (ReadOnlySqlTransaction); nothing lands."""

    async def scenario() -> DBAPIError:
        async with Shop(adb, readonly=True) as unit:
            assert await scalar(unit, "SHOW transaction_read_only") == "on"
            with pytest.raises(DBAPIError) as info:
                await unit.session.execute(
                    text("INSERT INTO uow_test_items (name, qty) VALUES ('apple', 0)")
                )
            return info.value

    error = run(scenario())
    assert isinstance(error.orig, psycopg.errors.ReadOnlySqlTransaction), repr(error.orig)
    assert committed(admin) == []


def test_readonly_never_commits(adb: Database, admin: Admin) -> None:
    """A readonly unit sends no COMMIT; pending changes or commit() raise UsageError."""
    commits: list[object] = []
    event.listen(adb.async_engine.sync_engine, "commit", commits.append)

    async def scenario() -> None:
        async with Shop(adb) as unit:
            await add(unit, "apple")
        commits.clear()
        async with Shop(adb, readonly=True) as unit:
            assert [i.name for i in await unit.items.list()] == ["apple"]
        with pytest.raises(UsageError, match="readonly"):
            async with Shop(adb, readonly=True) as unit:
                unit.items.add(Item(name="pear"))
        async with Shop(adb, readonly=True) as unit:
            with pytest.raises(UsageError, match="readonly"):
                await unit.commit()

    run(scenario())
    assert commits == []
    assert committed(admin) == ["apple"]


def test_isolation_applies_and_the_next_unit_is_back_to_default(make_adb: MakeDatabase) -> None:
    """isolation= sets the level of its own transaction only; the same connection reverts."""
    db = make_adb(pool_size=1, max_overflow=0)  # every unit gets the same connection

    async def scenario() -> list[tuple[str, int]]:
        seen = []
        for isolation in ("SERIALIZABLE", None, "REPEATABLE READ", None):
            async with AsyncUnitOfWork(db, isolation=isolation) as unit:
                level = await scalar(unit, "SHOW transaction_isolation")
                seen.append((level, await scalar(unit, "SELECT pg_backend_pid()")))
        return seen

    seen = run(scenario())
    assert [level for level, _ in seen] == [
        "serializable",
        "read committed",
        "repeatable read",
        "read committed",
    ]
    assert len({pid for _, pid in seen}) == 1


def test_timeout_stops_a_long_statement(adb: Database) -> None:
    """timeout=0.5 stops pg_sleep(5) within about a second with StatementTimeout, for that unit."""

    async def scenario() -> tuple[float, str]:
        started = time.monotonic()
        with pytest.raises(uow.StatementTimeout):
            async with AsyncUnitOfWork(adb, timeout=0.5) as unit:
                await unit.session.execute(text("SELECT pg_sleep(5)"))
        elapsed = time.monotonic() - started
        async with AsyncUnitOfWork(adb) as unit:
            return elapsed, await scalar(unit, "SHOW statement_timeout")

    elapsed, after = run(scenario())
    assert 0.45 <= elapsed < 1.2, f"stopped after {elapsed:.2f}s"
    assert after != "500ms"


def test_savepoint_failure_keeps_outer_work(adb: Database, admin: Admin) -> None:
    """A failed savepoint undoes only its own work (an error or a unique violation)."""

    async def scenario() -> None:
        async with Shop(adb) as unit:
            await add(unit, "apple")
            with pytest.raises(Boom):
                async with unit.savepoint():
                    await add(unit, "pear")
                    raise Boom
            with pytest.raises(IntegrityError):
                async with unit.savepoint():
                    await add(unit, "apple")  # the same unique name again
            await add(unit, "plum")

    run(scenario())
    assert committed(admin) == ["apple", "plum"]


# -- on_commit ----------------------------------------------------------------------------


def test_on_commit_runs_only_after_commit(adb: Database, admin: Admin) -> None:
    """Sync and async callbacks run in order after the commit, with the connection returned."""
    calls: list[tuple[str, list[str], int]] = []

    def record(name: str) -> None:
        calls.append((name, committed(admin), adb.async_engine.pool.checkedout()))

    async def scenario() -> None:
        async def notify() -> None:
            await asyncio.sleep(0)
            record("async")

        async with Shop(adb) as unit:
            await add(unit, "apple")
            unit.on_commit(lambda: record("sync"))
            unit.on_commit(notify)
            assert calls == []

    run(scenario())
    assert calls == [("sync", ["apple"], 0), ("async", ["apple"], 0)]


def test_on_commit_never_runs_after_rollback(adb: Database) -> None:
    """Callbacks of a block that fails, or registered before rollback(), never run."""
    calls: list[str] = []

    async def scenario() -> None:
        async def notify() -> None:
            calls.append("async")

        with pytest.raises(Boom):
            async with Shop(adb) as unit:
                unit.on_commit(lambda: calls.append("sync"))
                unit.on_commit(notify)
                raise Boom
        async with Shop(adb) as unit:
            unit.on_commit(notify)
            await unit.rollback()
            unit.on_commit(lambda: calls.append("after rollback"))

    run(scenario())
    assert calls == ["after rollback"]


# -- nesting and tasks --------------------------------------------------------------------


def test_nested_unit_joins_and_commits_nothing_itself(adb: Database, admin: Admin) -> None:
    """A unit entered inside another in the same task shares its session and commits nothing."""

    async def scenario() -> list[str]:
        async with Shop(adb) as outer:
            await add(outer, "apple")
            async with Shop(adb) as inner:
                assert inner.session is outer.session
                await add(inner, "pear")
                await inner.commit()  # in a joined unit: only a flush
            return committed(admin)

    assert run(scenario()) == []
    assert committed(admin) == ["apple", "pear"]


def test_failed_nested_unit_makes_the_outer_raise(adb: Database, admin: Admin) -> None:
    """If a joined unit fails, the outer one rolls back and raises TransactionRolledBack."""

    async def scenario() -> None:
        async with Shop(adb) as outer:
            await add(outer, "apple")
            with pytest.raises(Boom):
                async with Shop(adb) as inner:
                    await add(inner, "pear")
                    raise Boom

    with pytest.raises(uow.TransactionRolledBack) as info:
        run(scenario())
    assert isinstance(info.value.__cause__, Boom)
    assert committed(admin) == []


def test_unit_in_another_task_does_not_join(adb: Database, admin: Admin) -> None:
    """Units opened by tasks (asyncio.gather) under an open unit get their own transactions."""

    async def scenario() -> tuple[list[str], list[str]]:
        async with Shop(adb) as outer:
            await add(outer, "outer")

            async def child(name: str) -> Any:
                async with Shop(adb) as unit:
                    await add(unit, name)
                    if name == "failing":
                        raise Boom
                    return unit.session

            results = await asyncio.gather(
                child("left"), child("right"), child("failing"), return_exceptions=True
            )
            sessions = results[:2]
            assert isinstance(results[2], Boom)
            assert all(s is not outer.session for s in sessions)
            assert sessions[0] is not sessions[1]
            during = committed(admin)
            await add(outer, "outer-after")  # the outer unit is unharmed by the failed child
        return during, committed(admin)

    during, after = run(scenario())
    assert during == ["left", "right"]
    assert after == ["left", "outer", "outer-after", "right"]


def test_reentering_an_active_unit_raises(adb: Database, admin: Admin) -> None:
    """Entering a unit that is already active raises UsageError; the outer block goes on."""

    async def scenario() -> None:
        unit = Shop(adb)
        async with unit:
            await add(unit, "apple")
            with pytest.raises(UsageError, match="already active"):
                async with unit:
                    pass
            await add(unit, "pear")
        async with unit:  # and once it has ended, it can run another block
            await add(unit, "plum")

    run(scenario())
    assert committed(admin) == ["apple", "pear", "plum"]


def test_session_from_another_task_raises(adb: Database, admin: Admin) -> None:
    """Using a unit's session or repositories from another task raises UsageError."""

    async def scenario() -> None:
        async with Shop(adb) as unit:

            async def touch_session() -> object:
                return unit.session

            with pytest.raises(UsageError, match="another task"):
                await asyncio.create_task(touch_session())
            with pytest.raises(UsageError, match="another task"):
                await asyncio.create_task(unit.items.count())
            await add(unit, "apple")  # still fine in its own task

    run(scenario())
    assert committed(admin) == ["apple"]


# -- repositories -------------------------------------------------------------------------

FRUIT = [("apple", 3), ("pear", 8), ("plum", 5), ("kiwi", 0), ("fig", 12)]


async def stock(db: Database) -> None:
    """Store FRUIT (ids 1 to 5, in that order)."""
    async with Shop(db) as unit:
        unit.items.add_all([Item(name=name, qty=qty) for name, qty in FRUIT])


def test_repository_add_get_and_get_for_update(adb: Database) -> None:
    """add() inserts at flush; get() and get_for_update() return the object or None."""

    async def scenario() -> None:
        async with Shop(adb) as unit:
            apple = unit.items.add(Item(name="apple", qty=3))
            assert apple.id is None
            await unit.items.flush()
            assert apple.id == 1
        async with Shop(adb) as unit:
            found = await unit.items.get(1)
            assert found is not None
            assert (found.name, found.qty) == ("apple", 3)
            assert await unit.items.get(99) is None
            assert await unit.items.get_for_update(1) is found
            assert await unit.items.get_for_update(99, skip_locked=True) is None

    run(scenario())


def test_repository_list_count_exists(adb: Database) -> None:
    """list() filters, orders and pages; count() and exists() see pending objects too."""

    async def scenario() -> None:
        await stock(adb)
        async with Shop(adb) as unit:
            found = await unit.items.list(Item.qty > 2, Item.qty < 10, order_by=Item.id)
            assert [i.name for i in found] == ["apple", "pear", "plum"]
            page = await unit.items.list(order_by=Item.qty.desc(), limit=2, offset=1)
            assert [i.name for i in page] == ["pear", "plum"]
            assert [i.id for i in await unit.items.list(name="kiwi", for_update=True)] == [4]
            assert await unit.items.count() == 5
            assert await unit.items.count(Item.qty >= 5) == 3
            unit.items.add(Item(name="lime"))
            assert await unit.items.count() == 6
            assert await unit.items.exists(name="lime")
            assert not await unit.items.exists(Item.qty > 100)

    run(scenario())


def test_repository_insert_many(adb: Database, admin: Admin) -> None:
    """insert_many() inserts rows in batches, applies defaults and returns the row count."""

    async def scenario() -> None:
        async with Shop(adb) as unit:
            rows = [{"name": f"n{i}", "qty": i} for i in range(7)]
            assert await unit.items.insert_many(rows, batch_size=3) == 7
            assert await unit.items.insert_many([{"name": "no-qty"}, {"name": "x", "qty": 1}]) == 2

    run(scenario())
    rows = admin.execute("SELECT name, qty FROM uow_test_items ORDER BY id").fetchall()
    assert rows == [*((f"n{i}", i) for i in range(7)), ("no-qty", 0), ("x", 1)]


def test_repository_upsert(adb: Database, admin: Admin) -> None:
    """upsert() inserts a new row, then updates it on a conflict, returning the unit's object."""

    async def scenario() -> None:
        async with Shop(adb) as unit:
            (plum,) = await unit.items.upsert({"name": "plum", "qty": 1}, conflict=["name"])
            assert plum.qty == 1
            (again,) = await unit.items.upsert({"name": "plum", "qty": 9}, conflict=["name"])
            assert again is plum
            assert plum.qty == 9
            rows = [{"name": "plum", "qty": 0}, {"name": "fig", "qty": 2}]
            (fig,) = await unit.items.upsert(rows, conflict=["name"], update=())  # DO NOTHING
            assert (fig.name, plum.qty) == ("fig", 9)

    run(scenario())
    rows = admin.execute("SELECT name, qty FROM uow_test_items ORDER BY name").fetchall()
    assert rows == [("fig", 2), ("plum", 9)]


def test_repository_update_where_and_delete_where(adb: Database, admin: Admin) -> None:
    """update_where() and delete_where() change rows in one statement and return counts."""

    async def scenario() -> None:
        await stock(adb)
        async with Shop(adb) as unit:
            pear = await unit.items.get(2)
            assert pear is not None
            assert await unit.items.update_where({"qty": 1}, Item.qty > 7) == 2
            assert pear.qty == 1  # loaded objects see the new values
            assert await unit.items.update_where({"qty": Item.qty + 10}, name="kiwi") == 1
            assert await unit.items.delete_where(Item.qty < 3) == 2  # pear and fig
            with pytest.raises(UsageError, match="needs a criterion"):
                await unit.items.delete_where()
        async with Shop(adb) as unit:
            assert await unit.items.delete_where(name="plum") == 1

    run(scenario())
    rows = admin.execute("SELECT name, qty FROM uow_test_items ORDER BY id").fetchall()
    assert rows == [("apple", 3), ("kiwi", 10)]
    assert run(_delete_all(adb)) == 2


async def _delete_all(db: Database) -> int:
    async with Shop(db) as unit:
        return await unit.items.delete_where(true())


def test_repository_stream(adb: Database) -> None:
    """`async for` over stream() yields the matching objects in order; leaving early is fine."""

    async def scenario() -> None:
        await stock(adb)
        async with Shop(adb) as unit:
            qtys = [i.qty async for i in unit.items.stream(order_by=Item.qty, batch_size=2)]
            assert qtys == [0, 3, 5, 8, 12]
            names = [i.name async for i in unit.items.stream(Item.qty > 7, order_by=Item.id)]
            assert names == ["pear", "fig"]
            async for item in unit.items.stream(order_by=Item.id, batch_size=1):
                assert item.name == "apple"
                break  # the server-side cursor is closed; the unit goes on
            assert await unit.items.count() == 5

    run(scenario())


def test_repository_for_a_model(adb: Database) -> None:
    """repository(Model) is the declared repository, the same one each call, on any unit."""

    async def scenario() -> None:
        async with Shop(adb) as unit:
            assert unit.repository(Item) is unit.items
            assert unit.repository(Item) is unit.repository(Item)
        async with AsyncUnitOfWork(adb) as plain:
            items = plain.repository(Item)
            assert isinstance(items, AsyncRepository)
            items.add(Item(name="apple"))
            assert await items.count() == 1

    run(scenario())


def test_repository_get_by(adb: Database) -> None:
    """get_by() returns the one match or None, and raises MultipleRowsFound on several."""

    async def scenario() -> None:
        await stock(adb)
        async with Shop(adb) as unit:
            plum = await unit.items.get_by(name="plum")
            assert plum is not None
            assert plum.id == 3
            assert await unit.items.get_by(name="plum", for_update=True) is plum
            assert await unit.items.get_by(name="lime") is None
            unit.items.add(Item(name="lime", qty=5))
            with pytest.raises(uow.MultipleRowsFound, match="more than one Item has these qty"):
                await unit.items.get_by(qty=5)
            with pytest.raises(UsageError, match="needs attribute=value criteria"):
                await unit.items.get_by()
            with pytest.raises(UsageError, match="get_by: Item has no attribute 'nope'"):
                await unit.items.get_by(nope=1)

    run(scenario())


def test_repository_bad_input_raises_usage_error(adb: Database, admin: Admin) -> None:
    """Unknown keys, rows that are not mappings and bad conflict= raise UsageError by name."""

    async def scenario() -> None:
        async with Shop(adb) as unit:
            items = unit.items
            with pytest.raises(UsageError, match="upsert: Item has no column 'nope'"):
                await items.upsert({"nope": 1})
            with pytest.raises(UsageError, match="upsert conflict=: Item has no column 'nope'"):
                await items.upsert({"name": "plum"}, conflict=["nope"])
            with pytest.raises(UsageError, match="update_where: Item has no attribute 'nope'"):
                await items.update_where({"qty": 1}, nope=1)
            with pytest.raises(UsageError, match="insert_many: row 0 is a tuple"):
                await items.insert_many([("name", "x")])  # type: ignore[list-item]
            with pytest.raises(UsageError, match="insert_many: row 0 is a NoneType"):
                await items.insert_many([None])  # type: ignore[list-item]
            with pytest.raises(UsageError, match="get: 2 values given"):
                await items.get((1, 2))
            with pytest.raises(UsageError, match="count: Item has no attribute 'nope'"):
                await items.count(nope=1)
            with pytest.raises(UsageError, match="stream: Item has no attribute 'nope'"):
                [i async for i in items.stream(nope=1)]
            await add(unit, "apple")

    run(scenario())
    assert committed(admin) == ["apple"]


def test_repository_used_after_its_block_raises(adb: Database) -> None:
    """A repository kept past its block raises UsageError instead of touching stale state."""

    async def scenario() -> None:
        async with Shop(adb) as unit:
            items = unit.items
            plain = unit.repository(Item)
        for repository in (items, plain):
            with pytest.raises(UsageError, match="ended"):
                await repository.list()
            with pytest.raises(UsageError, match="ended"):
                repository.add(Item(name="late"))

    run(scenario())


# -- retries ------------------------------------------------------------------------------


def test_run_transaction_async_retries_a_serialization_failure(adb: Database) -> None:
    """Two SERIALIZABLE increments of one row conflict; one is retried and both land."""
    attempts: Counter[str] = Counter()

    async def scenario() -> int:
        async with Shop(adb) as unit:
            unit.items.add(Item(name="counter", qty=0))
        both_read = asyncio.Barrier(2)

        async def increment(who: str) -> None:
            async def step(unit: Shop) -> None:
                attempts[who] += 1
                (counter,) = await unit.items.list(name="counter")
                if attempts[who] == 1:  # both read 0 before either writes
                    await asyncio.wait_for(both_read.wait(), 5)
                counter.qty += 1
                await unit.flush()

            await uow.run_transaction_async(
                step, unit_of_work=Shop, database=adb, isolation="SERIALIZABLE"
            )

        await asyncio.gather(increment("a"), increment("b"))
        async with Shop(adb) as unit:
            (counter,) = await unit.items.list(name="counter")
            return counter.qty

    assert run(scenario()) == 2
    assert sum(attempts.values()) == 3
    assert adb.counters()["retries"] >= 1


def test_run_transaction_async_does_not_retry_other_errors(adb: Database) -> None:
    """An application error or a unique violation propagates after a single attempt."""
    calls: Counter[str] = Counter()

    async def scenario() -> None:
        async def failing(unit: Shop) -> None:
            calls["boom"] += 1
            raise Boom

        async def duplicate(unit: Shop) -> None:
            calls["duplicate"] += 1
            unit.items.add_all([Item(name="apple"), Item(name="apple")])
            await unit.flush()

        with pytest.raises(Boom):
            await uow.run_transaction_async(failing, unit_of_work=Shop, database=adb)
        with pytest.raises(IntegrityError):
            await uow.run_transaction_async(duplicate, unit_of_work=Shop, database=adb)

    run(scenario())
    assert calls == {"boom": 1, "duplicate": 1}
    assert adb.counters()["retries"] == 0


def test_transactional_on_an_async_function(adb: Database, admin: Admin) -> None:
    """@uow.transactional on an async def passes a fresh AsyncUnitOfWork on each attempt."""
    units: list[AsyncUnitOfWork] = []

    @uow.transactional(database=adb, retries=2, backoff=0.01)
    async def add_item(unit: AsyncUnitOfWork, name: str) -> int:
        units.append(unit)
        item = unit.repository(Item).add(Item(name=name))
        await unit.flush()
        if len(units) == 1:
            raise uow.SerializationFailure("a conflict on the first attempt")
        return item.id

    @uow.transactional(database=adb, unit_of_work=Shop)
    async def count(unit: Shop) -> int:
        units.append(unit)
        return await unit.items.count()

    async def scenario() -> tuple[int, int]:
        return await add_item("apple"), await count()

    ident, total = run(scenario())
    assert (ident, total) == (2, 1)  # the first attempt's id was consumed, then rolled back
    assert [type(unit) for unit in units] == [AsyncUnitOfWork, AsyncUnitOfWork, Shop]
    assert units[0] is not units[1]
    assert committed(admin) == ["apple"]


@pytest.mark.parametrize("async_first", [True, False], ids=["async-first", "sync-first"])
def test_one_transactional_decorator_on_an_async_def_and_a_def(
    adb: Database, async_first: bool
) -> None:
    """One transactional(...) object decorates an async def and a def; each keeps its options."""
    decorate = uow.transactional(database=adb, retries=1, backoff=0.01, max_backoff=0.01)
    attempts: Counter[str] = Counter()

    async def read_async(unit: AsyncUnitOfWork) -> str:
        attempts["async"] += 1
        if attempts["async"] == 1:
            raise uow.SerializationFailure("a conflict on the first attempt")
        return f"{type(unit).__name__}:{await unit.session.scalar(text('SELECT 1'))}"

    def read_sync(unit: uow.UnitOfWork) -> str:
        attempts["sync"] += 1
        if attempts["sync"] == 1:
            raise uow.SerializationFailure("a conflict on the first attempt")
        return f"{type(unit).__name__}:{unit.session.scalar(text('SELECT 1'))}"

    if async_first:
        decorated_async, decorated_sync = decorate(read_async), decorate(read_sync)
    else:
        decorated_sync, decorated_async = decorate(read_sync), decorate(read_async)
    assert decorated_sync() == "UnitOfWork:1"
    assert run(decorated_async()) == "AsyncUnitOfWork:1"
    assert attempts == {"async": 2, "sync": 2}  # retries=1 kept by both
