"""uow.testing's rolled-back transactions and pytest fixtures, on a real PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
from sqlalchemy import text

from tests.models import Item
from uow import AsyncUnitOfWork, Database, UnitOfWork, UsageError, get_database
from uow.testing import rolled_back

pytest_plugins = ["pytester"]


def test_rolled_back_keeps_commits_inside_and_leaves_nothing(
    database: Database, admin: psycopg.Connection[Any]
) -> None:
    """Units of work commit as usual inside rolled_back(), and nothing remains afterwards."""
    with rolled_back(database) as db:
        assert get_database() is db
        with UnitOfWork() as unit:
            unit.repository(Item).add(Item(name="apple"))
        with UnitOfWork() as unit:  # a later unit sees the committed row
            assert unit.repository(Item).count() == 1
        with pytest.raises(ValueError), UnitOfWork() as unit:
            unit.repository(Item).add(Item(name="pear"))
            unit.session.flush()
            raise ValueError
        with UnitOfWork() as unit:  # the failed unit rolled back to its savepoint only
            assert [i.name for i in unit.repository(Item).list()] == ["apple"]
    assert get_database() is database
    assert admin.execute("SELECT count(*) FROM uow_test_items").fetchone() == (0,)
    assert database.status().checked_out == 0


def test_rolled_back_database_reports_the_real_pools(database: Database) -> None:
    """stats(), status() and counters() of the rolled-back database are the real database's."""
    with rolled_back(database) as db:
        with UnitOfWork() as unit:
            unit.repository(Item).add(Item(name="apple"))
        assert db.status() == database.status()
        assert db.status().checked_out == 1  # the test's own connection
        assert db.stats() == database.stats()
        assert db.stats().connections_num >= 1
        assert db.counters() == database.counters()
        assert db.replica_stats() == []
    assert database.status().checked_out == 0


def test_rolled_back_async_units_are_rolled_back_too(
    database: Database, admin: psycopg.Connection[Any]
) -> None:
    """`async with rolled_back(db)` runs AsyncUnitOfWork in one transaction, rolled back after."""

    async def scenario() -> None:
        async with rolled_back(database) as db:
            assert get_database() is db
            async with AsyncUnitOfWork() as unit:
                unit.repository(Item).add(Item(name="apple"))
            with pytest.raises(ValueError):
                async with AsyncUnitOfWork() as unit:
                    unit.repository(Item).add(Item(name="pear"))
                    await unit.flush()
                    raise ValueError
            async with AsyncUnitOfWork(readonly=True, timeout=0.5) as unit:
                assert [i.name for i in await unit.repository(Item).list()] == ["apple"]
                assert await unit.session.scalar(text("SHOW statement_timeout")) == "500ms"
            assert db.stats().connections_num >= 1  # the asyncio pool's connection counts
            with pytest.raises(UsageError, match="AsyncUnitOfWork there"):
                UnitOfWork().__enter__()
        assert get_database() is database
        await database.dispose_async()

    asyncio.run(scenario())
    assert admin.execute("SELECT count(*) FROM uow_test_items").fetchone() == (0,)
    assert database.status().checked_out == 0


def test_rolled_back_refuses_async_units_in_a_sync_block(database: Database) -> None:
    """An AsyncUnitOfWork inside `with rolled_back(db)` is refused, naming `async with`."""

    async def open_async_unit() -> None:
        async with AsyncUnitOfWork() as unit:
            await unit.session.execute(text("SELECT 1"))

    with rolled_back(database):
        with pytest.raises(UsageError, match="async with rolled_back"):
            asyncio.run(open_async_unit())
        with UnitOfWork() as unit:  # the sync units still work
            assert unit.session.execute(text("SELECT 1")).scalar_one() == 1


def test_pytest_fixtures_work_in_a_users_suite(
    pytester: pytest.Pytester, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user's suite using uow.testing.fixtures gets a database and rolled-back tests."""
    monkeypatch.setenv("UOW_TEST_DATABASE_URL", postgres_url)
    pytester.makeconftest('pytest_plugins = ["uow.testing.fixtures"]')
    pytester.makepyfile(
        """
        from sqlalchemy import text
        from uow import UnitOfWork

        def test_write(uow_transaction):
            with UnitOfWork() as unit:
                unit.session.execute(text("CREATE TABLE t_fixture (id int)"))
                unit.session.execute(text("INSERT INTO t_fixture VALUES (1)"))

        def test_nothing_left(uow_database):
            with UnitOfWork(uow_database) as unit:
                found = unit.session.execute(text("SELECT to_regclass('t_fixture')")).scalar()
            assert found is None
        """
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
