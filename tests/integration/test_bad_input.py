"""Bad input gives clear errors and writes nothing: hostile strings, silent hosts, bad passwords."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import make_url

from tests.models import Item
from uow import Database, DatabaseUnavailable, Settings, UnitOfWork
from uow.testing import EmbeddedPostgres

HOSTILE = [
    "'; DROP TABLE uow_test_items; --",
    "1 OR 1=1",
    "$$; DELETE FROM uow_test_items; $$",
    "\\x00\\'\"",
    "%s %(name)s {0}",
    "名前 🚀 \u202e",
]


def test_hostile_strings_are_data_never_sql(
    database: Database, admin: psycopg.Connection[Any]
) -> None:
    """Hostile strings through every repository method are stored or matched verbatim."""
    with UnitOfWork() as unit:
        items = unit.repository(Item)
        items.add_all(Item(name=f"a{i}{text}") for i, text in enumerate(HOSTILE))
        items.insert_many([{"name": f"b{i}{text}"} for i, text in enumerate(HOSTILE)])
        items.upsert([{"name": f"c{i}{text}", "qty": 1} for i, text in enumerate(HOSTILE)])
        for text in HOSTILE:
            assert items.list(name=text) == []
            assert items.get_by(name=text) is None
            assert items.count(Item.name == text) == 0
            assert not items.exists(name=text)
            assert items.update_where({"qty": 5}, Item.name == text) == 0
            assert items.delete_where(name=text) == 0
        assert items.update_where({"name": HOSTILE[0]}, name=f"a0{HOSTILE[0]}") == 1
    stored = {row[0] for row in admin.execute("SELECT name FROM uow_test_items")}
    assert HOSTILE[0] in stored
    assert {f"b{i}{text}" for i, text in enumerate(HOSTILE)} <= stored
    assert len(stored) == 3 * len(HOSTILE)


def test_wrongly_typed_values_fail_and_write_nothing(
    database: Database, admin: psycopg.Connection[Any]
) -> None:
    """A value of the wrong type for a column fails the unit, which leaves nothing behind."""
    with pytest.raises(sa_exc.DataError), UnitOfWork() as unit:
        unit.repository(Item).add(Item(name="kept?"))
        unit.flush()
        unit.repository(Item).get("1 OR 1=1")
    assert admin.execute("SELECT count(*) FROM uow_test_items").fetchone() == (0,)
    assert database.status().checked_out == 0


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts TCP connections but never says a word."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    try:
        yield int(listener.getsockname()[1])
    finally:
        listener.close()


def test_unresponsive_server_fails_within_connect_timeout(silent_port: int) -> None:
    """A host that never answers fails within connect_timeout, not minutes, with a clear error."""
    url = f"postgresql://app:hunter2@127.0.0.1:{silent_port}/db"
    with Database(Settings(url=url, connect_timeout=2)) as database:
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailable) as info, UnitOfWork(database) as unit:
            unit.repository(Item).count()
        elapsed = time.monotonic() - started
        assert 1.5 < elapsed < 5
        assert "connect_timeout=2s" in str(info.value)
        assert "hunter2" not in str(info.value)
        assert database.status().checked_out == 0


def test_wrong_password_is_a_clear_error_without_the_password() -> None:
    """A rejected password gives DatabaseUnavailable naming the failure, never the password."""
    with EmbeddedPostgres() as server:
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            conn.execute("CREATE ROLE app LOGIN PASSWORD 'right-one'")
        wrong = make_url(server.url).set(username="app", password="wr0ng-s3cret")
        url = wrong.render_as_string(hide_password=False)
        with Database(Settings(url=url)) as database:
            with (
                pytest.raises(DatabaseUnavailable, match="password authentication") as info,
                UnitOfWork(database) as unit,
            ):
                unit.repository(Item).count()
            assert "wr0ng-s3cret" not in str(info.value)
            assert "wr0ng-s3cret" not in repr(database)
        right = wrong.set(password="right-one").render_as_string(hide_password=False)
        with Database(Settings(url=right)) as database, UnitOfWork(database) as unit:
            assert (
                unit.session.connection().exec_driver_sql("SELECT current_user").scalar() == "app"
            )
