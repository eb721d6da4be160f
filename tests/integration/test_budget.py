"""The connection budget check, against the server's real max_connections."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from tests.conftest import MakeDatabase
from uow import ConfigurationError, UnitOfWork


def test_budget_that_cannot_fit_fails_the_first_unit_with_the_numbers(
    make_database: MakeDatabase,
) -> None:
    """processes x pool_size beyond max_connections fails loudly, saying what to change."""
    database = make_database(pool_size=5, processes=10_000)
    with pytest.raises(ConfigurationError) as info, UnitOfWork(database) as unit:
        unit.session.execute(text("SELECT 1"))
    message = str(info.value)
    assert f"connection budget exceeded on {database.settings.masked_url}:" in message
    assert "10000 processes x (pool_size + max_overflow = 5) = 50000 connections" in message
    assert "max_connections" in message
    assert "UOW_POOL_SIZE" in message
    assert database.status().checked_out == 0


def test_budget_that_fits_is_checked_once_and_reported(make_database: MakeDatabase) -> None:
    """A budget that fits passes; db.check() returns the numbers it compared."""
    database = make_database(pool_size=3, max_overflow=2, processes=4)
    with UnitOfWork(database) as unit:
        unit.session.execute(text("SELECT 1"))
    budget = database.check()
    assert budget.needed == 20
    assert budget.max_connections >= budget.available >= budget.needed
    assert budget.reserved >= 3  # superuser_reserved_connections defaults to 3


def test_budget_check_can_be_turned_off(make_database: MakeDatabase) -> None:
    """check_budget=False skips the check (for example behind PgBouncer)."""
    database = make_database(pool_size=5, processes=10_000, check_budget=False)
    with UnitOfWork(database) as unit:
        assert unit.session.execute(text("SELECT 1")).scalar_one() == 1
    with pytest.raises(ConfigurationError, match="connection budget exceeded"):
        database.check()  # asked explicitly, it still tells the truth
