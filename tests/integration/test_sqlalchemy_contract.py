"""What code written for SQLAlchemy expects of a pool keeps holding for uow's, on PostgreSQL.

A pool timeout is ``sqlalchemy.exc.TimeoutError``, and the pool logs under
``sqlalchemy.pool``. SQLAlchemy's own test/engine/test_pool.py is run against uow's
pools by tests/ecosystem/sqlalchemy_pool (from .ci/run); these tests pin the same
promises through a UnitOfWork on a real server.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
import sqlalchemy.exc
from sqlalchemy import text

from tests.conftest import CapturedLog, MakeDatabase
from uow import PoolExhausted, UnitOfWork, UnitOfWorkError


def test_pool_timeout_is_caught_as_sqlalchemys_timeout_error(make_database: MakeDatabase) -> None:
    """`except sqlalchemy.exc.TimeoutError` catches a unit's pool timeout; not asyncio's."""
    database = make_database(pool_size=1, max_overflow=0, pool_timeout=0.2)
    with database.engine.connect() as held:
        held.execute(text("SELECT 1"))
        with pytest.raises(sqlalchemy.exc.TimeoutError) as info, UnitOfWork(database) as unit:
            unit.session.execute(text("SELECT 1"))
    error = info.value
    assert isinstance(error, PoolExhausted)
    assert isinstance(error, UnitOfWorkError)
    # asyncio.TimeoutError is the builtin TimeoutError since 3.11: code around
    # asyncio.timeout() (and SQLAlchemy's error handling) would take it for a cancelled wait.
    assert not isinstance(error, asyncio.TimeoutError)
    assert str(error).startswith("no database connection became free within pool_timeout=0.2s")
    assert database.status().checked_out == 0


@pytest.mark.parametrize("switch", ["echo_pool", "logger level"])
def test_pool_logs_checkout_and_return_under_sqlalchemy_pool(
    make_database: MakeDatabase, pool_log: CapturedLog, switch: str
) -> None:
    """A handler on "sqlalchemy.pool" receives the pool's checkout and return messages."""
    options: dict[str, object] = {"pool_logging_name": "orders"}
    if switch == "echo_pool":
        options["echo_pool"] = "debug"
    else:
        logging.getLogger("sqlalchemy.pool").setLevel(logging.DEBUG)
    database = make_database(engine_options=options)
    with UnitOfWork(database) as unit:
        unit.session.execute(text("SELECT 1"))
    messages = [record.getMessage() for record in pool_log.records]
    assert any("checked out from pool" in message for message in messages), messages
    assert any("being returned to pool" in message for message in messages), messages
    # Named like SQLAlchemy's pools ("sqlalchemy.pool.impl.<class>[.<logging_name>]").
    names = {record.name for record in pool_log.records}
    assert names == {"sqlalchemy.pool.impl.FairQueuePool.orders"}, names
