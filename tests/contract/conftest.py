"""The contract fixture: every test here runs against the real UnitOfWork and the fake.

``make_unit()`` returns a ShopUnitOfWork for one ``with`` block: on PostgreSQL a new
unit on the test's emptied tables, in memory the same fake each time (so data committed
by one block is read by the next one, as on the server). Keyword arguments
(``readonly=True``) make a unit with those settings reading the same data.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.models import ShopUnitOfWork
from uow.testing import InMemoryStore, fake

MakeUnit = Callable[..., ShopUnitOfWork]


@pytest.fixture(params=["postgres", "memory"])
def make_unit(request: pytest.FixtureRequest) -> MakeUnit:
    """A factory of ShopUnitOfWork: the real one on PostgreSQL, or the in-memory fake."""
    if request.param == "postgres":
        database = request.getfixturevalue("database")
        return lambda **kwargs: ShopUnitOfWork(database, **kwargs)
    store = InMemoryStore()
    unit = fake(ShopUnitOfWork, store=store)

    def make(**kwargs: Any) -> ShopUnitOfWork:
        return fake(ShopUnitOfWork, store=store, **kwargs) if kwargs else unit

    return make
