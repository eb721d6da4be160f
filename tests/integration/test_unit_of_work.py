"""The unit-of-work contract against a real PostgreSQL: commit, rollback, always release."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import text

from tests.conftest import MakeDatabase
from tests.models import Item, ShopUnitOfWork
from uow import (
    Database,
    DatabaseUnavailable,
    Repository,
    Settings,
    StatementTimeout,
    TransactionRolledBack,
    UnitOfWork,
    UsageError,
)


def item_names(admin: psycopg.Connection[Any]) -> list[str]:
    return [row[0] for row in admin.execute("SELECT name FROM uow_test_items ORDER BY name")]


def add_item(unit: UnitOfWork, name: str, qty: int = 0) -> None:
    unit.repository(Item).add(Item(name=name, qty=qty))
    unit.session.flush()


def test_clean_exit_commits_visible_from_another_connection(
    database: Database, admin: psycopg.Connection[Any]
) -> None:
    """A row written in a clean block is visible from another connection afterwards."""
    with UnitOfWork() as unit:
        add_item(unit, "apple")
        assert item_names(admin) == []  # not before the commit
    assert item_names(admin) == ["apple"]
    assert database.status().checked_out == 0


@pytest.mark.parametrize(
    "error",
    [ValueError("boom"), KeyboardInterrupt(), SystemExit()],
    ids=["exception", "KeyboardInterrupt", "SystemExit"],
)
def test_any_exception_rolls_back_and_returns_connection(
    database: Database, admin: psycopg.Connection[Any], error: BaseException
) -> None:
    """An exception, KeyboardInterrupt or SystemExit rolls back, propagates unchanged, and
    returns the connection."""
    with pytest.raises(type(error)) as info, UnitOfWork() as unit:
        add_item(unit, "apple")
        raise error
    assert info.value is error
    assert item_names(admin) == []
    assert database.status().checked_out == 0


def test_abandoned_generator_rolls_back(database: Database, admin: psycopg.Connection[Any]) -> None:
    """A generator closed inside a unit of work (GeneratorExit) rolls it back."""

    def producer() -> Iterator[int]:
        with UnitOfWork() as unit:
            add_item(unit, "apple")
            yield 1
            yield 2

    gen = producer()
    assert next(gen) == 1
    gen.close()
    assert item_names(admin) == []
    assert database.status().checked_out == 0


def test_failing_rollback_is_logged_and_does_not_hide_the_error(
    database: Database, admin: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    """When the rollback itself fails (connection killed), it is logged; the original error wins."""
    error = ValueError("the original error")
    with pytest.raises(ValueError) as info, UnitOfWork() as unit:
        add_item(unit, "apple")
        pid = unit.session.execute(text("SELECT pg_backend_pid()")).scalar_one()
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        time.sleep(0.2)
        raise error
    assert info.value is error
    assert "rollback failed" in caplog.text
    assert item_names(admin) == []
    assert database.status().checked_out == 0
    with UnitOfWork() as unit:  # the dead connection was discarded, not reused
        assert unit.session.execute(text("SELECT 1")).scalar_one() == 1


def test_readonly_refuses_writes(database: Database, admin: psycopg.Connection[Any]) -> None:
    """A readonly unit runs READ ONLY: the server refuses writes and nothing is committed."""
    with pytest.raises(sa_exc.InternalError) as info, UnitOfWork(readonly=True) as unit:
        assert unit.session.execute(text("SHOW transaction_read_only")).scalar() == "on"
        unit.session.execute(text("INSERT INTO uow_test_items (name, qty) VALUES ('x', 1)"))
    assert isinstance(info.value.orig, psycopg.errors.ReadOnlySqlTransaction)
    assert item_names(admin) == []
    with UnitOfWork() as unit:  # the pooled connection is writable again
        assert unit.session.execute(text("SHOW transaction_read_only")).scalar() == "off"


def test_readonly_with_unsaved_changes_raises(
    database: Database, admin: psycopg.Connection[Any]
) -> None:
    """Objects added in a readonly unit are not silently dropped: exit raises UsageError."""
    with pytest.raises(UsageError, match="readonly"), UnitOfWork(readonly=True) as unit:
        unit.repository(Item).add(Item(name="x"))
    assert item_names(admin) == []


def test_isolation_level_applies_to_the_unit_only(database: Database) -> None:
    """isolation= sets the transaction's level; the next unit gets the default again."""
    with UnitOfWork(isolation="SERIALIZABLE") as unit:
        assert unit.session.execute(text("SHOW transaction_isolation")).scalar() == "serializable"
    with UnitOfWork(isolation="repeatable read") as unit:
        level = unit.session.execute(text("SHOW transaction_isolation")).scalar()
        assert level == "repeatable read"
    with UnitOfWork() as unit:
        assert unit.session.execute(text("SHOW transaction_isolation")).scalar() == "read committed"


def test_bad_unit_options_are_refused() -> None:
    """Unknown isolation levels and bad timeouts raise UsageError at construction."""
    with pytest.raises(UsageError, match="isolation"):
        UnitOfWork(isolation="CHAOS")
    for bad in (0, -1, float("inf"), True):
        with pytest.raises(UsageError, match="timeout"):
            UnitOfWork(timeout=bad)


def test_timeout_stops_a_runaway_statement(database: Database) -> None:
    """timeout=0.5 makes the server cancel pg_sleep(5) within about a second."""
    started = time.monotonic()
    with (
        pytest.raises(StatementTimeout, match="statement timeout"),
        UnitOfWork(timeout=0.5) as unit,
    ):
        unit.session.execute(text("SELECT pg_sleep(5)"))
    assert time.monotonic() - started < 1.5
    assert database.status().checked_out == 0
    with UnitOfWork() as unit:  # SET LOCAL ended with the transaction
        assert unit.session.execute(text("SHOW statement_timeout")).scalar() == "30s"


def test_timeout_applies_after_explicit_commit(database: Database) -> None:
    """The per-unit timeout also covers transactions begun after commit() in the block."""
    with UnitOfWork(timeout=0.25) as unit:
        unit.session.execute(text("SELECT 1"))
        unit.commit()
        assert unit.session.execute(text("SHOW statement_timeout")).scalar() == "250ms"


def test_server_side_guards_are_set_on_every_connection(database: Database, app_name: str) -> None:
    """Each connection carries application_name and the three server-side timeouts."""
    with UnitOfWork() as unit:

        def show(name: str) -> Any:
            return unit.session.execute(text(f"SHOW {name}")).scalar()

        assert show("application_name") == app_name
        assert show("statement_timeout") == "30s"
        assert show("lock_timeout") == "10s"
        assert show("idle_in_transaction_session_timeout") == "1min"


def test_savepoint_failure_keeps_outer_work(
    database: Database, admin: psycopg.Connection[Any]
) -> None:
    """An exception in a savepoint undoes only its work; the outer work commits."""
    with UnitOfWork() as unit:
        add_item(unit, "outer")
        with pytest.raises(ValueError), unit.savepoint():
            add_item(unit, "inner")
            raise ValueError
        with unit.savepoint():
            add_item(unit, "inner-ok")
    assert item_names(admin) == ["inner-ok", "outer"]


def test_savepoint_survives_a_database_error(
    database: Database, admin: psycopg.Connection[Any]
) -> None:
    """A constraint violation inside a savepoint leaves the transaction usable."""
    with UnitOfWork() as unit:
        add_item(unit, "apple")
        with pytest.raises(sa_exc.IntegrityError), unit.savepoint():
            add_item(unit, "apple")
        add_item(unit, "pear")
    assert item_names(admin) == ["apple", "pear"]


def test_on_commit_runs_after_commit_with_connection_returned(database: Database) -> None:
    """on_commit callbacks run after the commit, once the connection is back in the pool."""
    seen: list[tuple[str, int]] = []
    with UnitOfWork() as unit:
        add_item(unit, "apple")
        unit.on_commit(lambda: seen.append(("cb", database.status().checked_out)))
        assert seen == []
    assert seen == [("cb", 0)]


def test_on_commit_never_runs_after_rollback(database: Database) -> None:
    """on_commit callbacks are dropped on rollback, on error and in a failed savepoint."""
    seen: list[str] = []
    with pytest.raises(ValueError), UnitOfWork() as unit:
        unit.on_commit(lambda: seen.append("error"))
        raise ValueError
    with UnitOfWork() as unit:
        unit.on_commit(lambda: seen.append("rolled back"))
        unit.rollback()
    with UnitOfWork() as unit:
        with pytest.raises(ValueError), unit.savepoint():
            unit.on_commit(lambda: seen.append("savepoint"))
            raise ValueError
        unit.on_commit(lambda: seen.append("kept"))
    assert seen == ["kept"]


def test_nested_unit_joins_and_does_not_commit_alone(
    database: Database, admin: psycopg.Connection[Any]
) -> None:
    """A UnitOfWork opened inside another shares its transaction; only the outer commits."""
    with UnitOfWork() as outer:
        with UnitOfWork() as inner:
            assert inner.session is outer.session
            add_item(inner, "nested")
            inner.commit()  # only flushes: the outer decides
        assert item_names(admin) == []
        assert database.status().checked_out == 1  # one connection, not two
    assert item_names(admin) == ["nested"]


def test_failed_nested_unit_dooms_the_outer_one(
    database: Database, admin: psycopg.Connection[Any]
) -> None:
    """If a joined unit fails, the outer one rolls back and says why, even if it was caught."""
    with pytest.raises(TransactionRolledBack, match="joined"), UnitOfWork() as outer:
        add_item(outer, "outer")
        try:
            with UnitOfWork() as inner:
                add_item(inner, "inner")
                raise ValueError("inner failed")
        except ValueError:
            pass
    assert item_names(admin) == []
    assert database.status().checked_out == 0


def test_nested_unit_cannot_change_transaction_options(database: Database) -> None:
    """A joined unit asking for another isolation, a timeout or to write in readonly is refused."""
    with UnitOfWork() as outer:
        with pytest.raises(UsageError, match="isolation"), UnitOfWork(isolation="SERIALIZABLE"):
            pass
        with pytest.raises(UsageError, match="timeout"), UnitOfWork(timeout=1):
            pass
        outer.session.execute(text("SELECT 1"))
    with UnitOfWork(readonly=True), pytest.raises(UsageError, match="readonly"), UnitOfWork():
        pass


def test_units_on_different_databases_do_not_join(
    database: Database, make_database: MakeDatabase
) -> None:
    """Nesting only joins units on the same Database."""
    other = make_database()
    with UnitOfWork() as outer, UnitOfWork(other) as inner:
        assert inner.session is not outer.session


def test_reentering_an_active_unit_raises(database: Database) -> None:
    """Entering the same active instance again raises UsageError; sequential reuse works."""
    unit = UnitOfWork()
    with unit:
        with pytest.raises(UsageError, match="already active"), unit:
            pass
        unit.session.execute(text("SELECT 1"))
    with unit:  # entered again after it exited
        unit.session.execute(text("SELECT 1"))


def test_use_from_another_thread_raises(database: Database) -> None:
    """Using a unit of work from a thread that did not open it raises UsageError."""
    errors: list[BaseException] = []
    with UnitOfWork() as unit:

        def other_thread() -> None:
            try:
                unit.session.execute(text("SELECT 1"))
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
    assert len(errors) == 1
    assert isinstance(errors[0], UsageError)
    assert "another thread" in str(errors[0])


def test_unit_is_unusable_outside_its_block(database: Database) -> None:
    """Outside the block, the unit, its repositories and its session refuse to work."""
    with ShopUnitOfWork() as unit:
        items = unit.items
        session = unit.session
    with pytest.raises(UsageError, match="not active"):
        unit.session  # noqa: B018
    with pytest.raises(UsageError, match="ended"):
        items.list()
    with pytest.raises(sa_exc.InvalidRequestError):
        session.execute(text("SELECT 1"))
    assert database.status().checked_out == 0


def test_declared_repositories_are_ready_in_the_block(
    database: Database, admin: psycopg.Connection[Any]
) -> None:
    """Repository annotations on a UnitOfWork subclass become repositories on its session."""
    with ShopUnitOfWork() as unit:
        assert isinstance(unit.items, Repository)
        assert unit.repository(Item) is unit.items
        unit.items.add(Item(name="apple"))
        assert unit.items.named("apple") is not None
    assert item_names(admin) == ["apple"]


def test_objects_stay_readable_after_the_unit(database: Database) -> None:
    """Objects loaded in a unit can still be read after it committed and closed."""
    with UnitOfWork() as unit:
        item = unit.repository(Item).add(Item(name="apple", qty=3))
    assert (item.name, item.qty) == ("apple", 3)


def test_commit_failure_rolls_back_and_propagates(
    database: Database, admin: psycopg.Connection[Any]
) -> None:
    """An error raised at COMMIT (a deferred constraint) rolls back and propagates."""
    with pytest.raises(sa_exc.IntegrityError), UnitOfWork() as unit:
        unit.session.execute(text("SET CONSTRAINTS ALL DEFERRED"))
        unit.session.execute(
            text("CREATE TEMP TABLE deferred_check (id int UNIQUE DEFERRABLE INITIALLY DEFERRED)")
        )
        unit.session.execute(text("INSERT INTO deferred_check VALUES (1), (1)"))
        add_item(unit, "apple")
    assert item_names(admin) == []
    assert database.status().checked_out == 0


def test_no_password_in_errors_or_logs(
    make_database: MakeDatabase, caplog: pytest.LogCaptureFixture
) -> None:
    """An unreachable server gives DatabaseUnavailable; no message or log shows the password."""
    caplog.set_level(logging.DEBUG)
    bad = Database(Settings(url="postgresql://app:hunter2@127.0.0.1:1/db", connect_timeout=2))
    try:
        with pytest.raises(DatabaseUnavailable) as info, UnitOfWork(bad) as unit:
            unit.session.execute(text("SELECT 1"))
        message = str(info.value)
        assert "127.0.0.1:1" in message
        assert "hunter2" not in message
        assert "hunter2" not in repr(bad)
        assert "hunter2" not in caplog.text
        assert bad.status().checked_out == 0
    finally:
        bad.dispose()
