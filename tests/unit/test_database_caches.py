"""A Database builds each lazily made part once, however many threads ask at the same time."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from uow import Database, Settings

URL = "postgresql://nobody@127.0.0.1:1/nothing"  # never connected to: nothing here does I/O


def _slowly(method: Any) -> Any:
    def slow(self: Any, **options: Any) -> Any:
        time.sleep(0.05)  # widens the window in which an unlocked cache would build twice
        return method(self, **options)

    return slow


def test_session_factories_and_binds_are_built_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """8 threads asking at once for sessions get one asyncio engine, bind and sessionmaker."""
    monkeypatch.setattr(AsyncEngine, "execution_options", _slowly(AsyncEngine.execution_options))
    monkeypatch.setattr(Engine, "execution_options", _slowly(Engine.execution_options))
    database = Database(Settings(url=URL, check_budget=False))
    barrier = threading.Barrier(8)

    def ask(_: int) -> tuple[object, object, object]:
        barrier.wait()
        async_session = database._new_async_session(readonly=True)
        session = database._new_session(readonly=True)
        return database.async_engine, async_session.bind, session.bind

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(8)))
    for part in zip(*answers, strict=True):
        assert len({id(each) for each in part}) == 1
    database.dispose()
