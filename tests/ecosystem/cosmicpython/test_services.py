"""The book's unit tests of the service layer (chapter 7, ``tests/unit/test_services.py``).

The book writes a FakeRepository and a FakeUnitOfWork by hand; uow ships them:
``uow.testing.fake(AllocationUnitOfWork)`` is an in-memory AllocationUnitOfWork with
the same rules as the real one, and ``committed`` to assert on. The last test runs the
same services on PostgreSQL, to show the fake stands in for the real unit of work.
"""

from __future__ import annotations

import pytest

from tests.ecosystem.cosmicpython import services
from tests.ecosystem.cosmicpython.model import AllocationUnitOfWork
from uow import Database
from uow.testing import FakeUnitOfWork, fake


def fake_uow() -> AllocationUnitOfWork:
    return fake(AllocationUnitOfWork)


def test_add_batch_for_new_product() -> None:
    """add_batch() creates the product it does not find, and commits."""
    uow = fake_uow()
    services.add_batch("b1", "CRUNCHY-ARMCHAIR", 100, None, uow)
    assert isinstance(uow, FakeUnitOfWork)
    assert uow.committed
    with uow:  # the fake's repositories, like the real ones, work inside a block
        assert uow.products.get("CRUNCHY-ARMCHAIR") is not None


def test_add_batch_for_existing_product() -> None:
    """A second batch for a known sku is added to the existing product."""
    uow = fake_uow()
    services.add_batch("b1", "GARISH-RUG", 100, None, uow)
    services.add_batch("b2", "GARISH-RUG", 99, None, uow)
    with uow:
        product = uow.products.get("GARISH-RUG")
        assert product is not None
        assert "b2" in [b.reference for b in product.batches]


def test_allocate_returns_allocation() -> None:
    """allocate() returns the reference of the batch it allocated to."""
    uow = fake_uow()
    services.add_batch("batch1", "COMPLICATED-LAMP", 100, None, uow)
    result = services.allocate("o1", "COMPLICATED-LAMP", 10, uow)
    assert result == "batch1"


def test_allocate_errors_for_invalid_sku() -> None:
    """allocate() on an unknown sku raises InvalidSku."""
    uow = fake_uow()
    services.add_batch("b1", "AREALSKU", 100, None, uow)

    with pytest.raises(services.InvalidSku, match="Invalid sku NONEXISTENTSKU"):
        services.allocate("o1", "NONEXISTENTSKU", 10, uow)


def test_allocate_commits() -> None:
    """allocate() commits its unit of work."""
    uow = fake_uow()
    services.add_batch("b1", "OMINOUS-MIRROR", 100, None, uow)
    assert isinstance(uow, FakeUnitOfWork)
    uow.committed = False
    services.allocate("o1", "OMINOUS-MIRROR", 10, uow)
    assert uow.committed


def test_the_same_services_on_postgres(allocation_db: Database) -> None:
    """The services behave alike on the real unit of work: batches, allocation, errors."""
    services.add_batch("b1", "GARISH-RUG", 5, None, AllocationUnitOfWork())
    services.add_batch("b2", "GARISH-RUG", 99, None, AllocationUnitOfWork())
    assert services.allocate("o1", "GARISH-RUG", 10, AllocationUnitOfWork()) == "b2"
    with pytest.raises(services.InvalidSku, match="Invalid sku NONEXISTENTSKU"):
        services.allocate("o1", "NONEXISTENTSKU", 10, AllocationUnitOfWork())
    with AllocationUnitOfWork(readonly=True) as uow:
        b2 = uow.batches.get_by(reference="b2")
        assert b2 is not None
        assert (b2.available_quantity, b2.sku) == (89, "GARISH-RUG")
        product = uow.products.get("GARISH-RUG")
        assert product is not None
        assert product.version_number == 1
