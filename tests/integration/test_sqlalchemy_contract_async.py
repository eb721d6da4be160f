"""SQLAlchemy's pool contract for AsyncUnitOfWork on PostgreSQL (sync: test_sqlalchemy_contract).

A pool timeout is ``sqlalchemy.exc.TimeoutError`` and not ``asyncio.TimeoutError``, and
the asyncio pool logs under ``sqlalchemy.pool``.
"""

from __future__ import annotations

import asyncio

import pytest
import sqlalchemy.exc
from sqlalchemy import text

from tests.conftest import CapturedLog, MakeDatabase, run
from uow import AsyncUnitOfWork, PoolExhausted


def test_async_pool_timeout_is_caught_as_sqlalchemys_timeout_error(make_adb: MakeDatabase) -> None:
    """`except sqlalchemy.exc.TimeoutError` catches an async unit's pool timeout; not asyncio's."""
    adb = make_adb(pool_size=1, max_overflow=0, pool_timeout=0.2)

    async def scenario() -> BaseException:
        async with adb.async_engine.connect() as held:
            await held.execute(text("SELECT 1"))
            try:
                async with AsyncUnitOfWork(adb) as unit:
                    await unit.session.execute(text("SELECT 1"))
            except sqlalchemy.exc.TimeoutError as exc:
                return exc
        pytest.fail("the second unit got a connection although the only one was held")

    error = run(scenario())
    assert isinstance(error, PoolExhausted)
    # Otherwise `async with asyncio.timeout(...)` around a unit could not tell its own
    # deadline from a full pool, and SQLAlchemy handles it like a cancellation.
    assert not isinstance(error, asyncio.TimeoutError)


def test_async_pool_logs_checkout_and_return_under_sqlalchemy_pool(
    make_adb: MakeDatabase, pool_log: CapturedLog
) -> None:
    """With echo_pool, a handler on "sqlalchemy.pool" receives the asyncio pool's messages."""
    adb = make_adb(engine_options={"echo_pool": "debug"})

    async def scenario() -> None:
        async with AsyncUnitOfWork(adb) as unit:
            await unit.session.execute(text("SELECT 1"))

    run(scenario())
    messages = [record.getMessage() for record in pool_log.records]
    assert any("checked out from pool" in message for message in messages), messages
    assert any("being returned to pool" in message for message in messages), messages
    names = {record.name for record in pool_log.records}
    assert names == {"sqlalchemy.pool.impl.AsyncQueuePool"}, names
