"""uow's engines keep SQLAlchemy's per-connection event dispatch off (a unit of work's CPU)."""

from __future__ import annotations

import pytest

from uow import Database, Settings

URL = "postgresql://nobody@127.0.0.1:1/nothing"  # never connected to: nothing here does I/O


@pytest.mark.parametrize(
    "overrides",
    [{}, {"statement_timeout": 0}, {"pool_pre_ping": False}, {"check_budget": False}],
    ids=["defaults", "no-statement-timeout", "no-pre-ping", "no-budget"],
)
def test_no_engine_level_listeners(overrides: dict[str, object]) -> None:
    """No ConnectionEvents listener: one would make every Connection dispatch all its events."""
    database = Database(Settings(url=URL, **overrides))
    try:
        assert not database.engine._has_events
        assert not database.async_engine.sync_engine._has_events
    finally:
        database.dispose()
