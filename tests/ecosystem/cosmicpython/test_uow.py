"""cosmicpython's integration tests of the unit of work, ported to uow on a real PostgreSQL.

The originals are ``tests/integration/test_uow.py`` on the branches chapter_06_uow and
chapter_07_aggregate of github.com/cosmicpython/code. The scenarios, data and SQL are
the book's; what changes is the API: ``AllocationUnitOfWork()`` (uow's UnitOfWork on
the process-wide default database) stands for ``SqlAlchemyUnitOfWork()``, and
``get_by(reference=...)`` for the book's repository ``get(reference=...)``.

One rule differs by design and is written out below: a block that ends without an
exception commits (the book's unit rolls back unless ``commit()`` was called).
"""

from __future__ import annotations

import threading
import time
import traceback
import uuid
from collections.abc import Callable
from datetime import date
from typing import Any

import psycopg.errors
import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

import uow
from tests.ecosystem.cosmicpython.model import AllocationUnitOfWork, OrderLine
from uow import Database, UnitOfWork


def random_suffix() -> str:
    return uuid.uuid4().hex[:6]


def random_sku(name: str = "") -> str:
    return f"sku-{name}-{random_suffix()}"


def random_batchref(name: str = "") -> str:
    return f"batch-{name}-{random_suffix()}"


def random_orderid(name: str | int = "") -> str:
    return f"order-{name}-{random_suffix()}"


def insert_batch(
    session: Session, ref: str, sku: str, qty: int, eta: date | None, *, product_version: int = 1
) -> None:
    session.execute(
        text("INSERT INTO cosmicpython.products (sku, version_number) VALUES (:sku, :version)"),
        dict(sku=sku, version=product_version),
    )
    session.execute(
        text(
            "INSERT INTO cosmicpython.batches (reference, sku, _purchased_quantity, eta)"
            " VALUES (:ref, :sku, :qty, :eta)"
        ),
        dict(ref=ref, sku=sku, qty=qty, eta=eta),
    )


def get_allocated_batch_ref(session: Session, orderid: str, sku: str) -> str:
    [[orderlineid]] = session.execute(
        text("SELECT id FROM cosmicpython.order_lines WHERE orderid=:orderid AND sku=:sku"),
        dict(orderid=orderid, sku=sku),
    )
    [[batchref]] = session.execute(
        text(
            "SELECT b.reference FROM cosmicpython.allocations"
            " JOIN cosmicpython.batches AS b ON batch_id = b.id"
            " WHERE orderline_id=:orderlineid"
        ),
        dict(orderlineid=orderlineid),
    )
    return str(batchref)


def batch_rows() -> list[Any]:
    """What a new unit of work sees in the batches table (the book's ``new_session``)."""
    with UnitOfWork(readonly=True) as check:
        return list(check.session.execute(text("SELECT * FROM cosmicpython.batches")))


@pytest.mark.parametrize(
    "fetch",
    [
        lambda unit: unit.batches.get_by(reference="batch1"),  # chapter 6: a Batch
        lambda unit: unit.products.get("HIPSTER-WORKBENCH"),  # chapter 7: the Product aggregate
    ],
    ids=["batch", "product"],
)
def test_uow_can_retrieve_a_batch_and_allocate_to_it(
    allocation_db: Database, fetch: Callable[[AllocationUnitOfWork], Any]
) -> None:
    """Chapters 6 and 7: a batch (or its product) fetched in a unit is allocated to, committed."""
    with AllocationUnitOfWork() as setup:
        insert_batch(setup.session, "batch1", "HIPSTER-WORKBENCH", 100, None)

    with AllocationUnitOfWork() as unit:
        aggregate = fetch(unit)
        assert aggregate is not None
        aggregate.allocate(OrderLine("o1", "HIPSTER-WORKBENCH", 10))
        unit.commit()

    with UnitOfWork(readonly=True) as check:
        assert get_allocated_batch_ref(check.session, "o1", "HIPSTER-WORKBENCH") == "batch1"


def test_clean_exit_commits_uncommitted_work_by_design(allocation_db: Database) -> None:
    """The book's test_rolls_back_uncommitted_work_by_default, inverted: a clean exit commits.

    The book's unit rolls back unless the block calls commit(), so that forgetting it is
    harmless. uow treats the ``with`` block itself as the transaction, as SQLAlchemy's
    ``with session.begin():`` and psycopg's ``with conn.transaction():`` do: a block that
    ends normally has done its work and commits; one that raises rolls back. So a
    forgotten commit() never loses writes silently, and a block that wants to discard
    its work says so, with rollback() (the counterpart below) or by raising.
    """
    with AllocationUnitOfWork() as unit:
        insert_batch(unit.session, "batch1", "MEDIUM-PLINTH", 100, None)
    assert [row.reference for row in batch_rows()] == ["batch1"]

    with AllocationUnitOfWork() as unit:
        insert_batch(unit.session, "batch2", "SMALL-PLINTH", 100, None)
        unit.rollback()
    assert [row.reference for row in batch_rows()] == ["batch1"]


def test_rolls_back_on_error(allocation_db: Database) -> None:
    """Work done in a block that raises is rolled back; the exception propagates."""

    class MyException(Exception):
        pass

    with pytest.raises(MyException), AllocationUnitOfWork() as unit:
        insert_batch(unit.session, "batch1", "LARGE-FORK", 100, None)
        raise MyException()

    assert batch_rows() == []


def try_to_allocate(
    orderid: str, sku: str, exceptions: list[Exception], both_have_read: threading.Barrier
) -> None:
    line = OrderLine(orderid, sku, 10)
    try:
        with AllocationUnitOfWork() as unit:
            product = unit.products.get(sku)
            assert product is not None
            product.allocate(line)
            both_have_read.wait(timeout=60)
            time.sleep(0.2)
            unit.commit()
    except Exception as e:
        print(traceback.format_exc())
        exceptions.append(e)


def test_concurrent_updates_to_version_are_not_allowed(allocation_db: Database) -> None:
    """Two threads allocate from one product at once: REPEATABLE READ lets one commit, and
    the other fails with SerializationFailure (SQLSTATE 40001); the version rises once.

    The book relies on ``time.sleep(0.2)`` to make both threads read before either
    commits; a barrier after the read makes that certain on a busy machine.
    """
    sku, batch = random_sku(), random_batchref()
    with AllocationUnitOfWork() as setup:
        insert_batch(setup.session, batch, sku, 100, eta=None, product_version=1)

    order1, order2 = random_orderid(1), random_orderid(2)
    exceptions: list[Exception] = []
    both_have_read = threading.Barrier(2)
    threads = [
        threading.Thread(target=try_to_allocate, args=(order, sku, exceptions, both_have_read))
        for order in (order1, order2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
        assert not thread.is_alive()

    with UnitOfWork(readonly=True) as check:
        [[version]] = check.session.execute(
            text("SELECT version_number FROM cosmicpython.products WHERE sku=:sku"),
            dict(sku=sku),
        )
        assert version == 2
        [exception] = exceptions
        assert isinstance(exception, uow.SerializationFailure)
        assert isinstance(exception, uow.TransientError)  # what uow.transactional retries
        cause = exception.__cause__
        assert isinstance(getattr(cause, "orig", cause), psycopg.errors.SerializationFailure)
        assert "could not serialize access due to concurrent update" in str(cause)

        orders = check.session.execute(
            text(
                "SELECT orderid FROM cosmicpython.allocations"
                " JOIN cosmicpython.batches ON allocations.batch_id = batches.id"
                " JOIN cosmicpython.order_lines ON allocations.orderline_id = order_lines.id"
                " WHERE order_lines.sku=:sku"
            ),
            dict(sku=sku),
        ).all()
        assert len(orders) == 1
    with AllocationUnitOfWork() as unit:
        unit.session.execute(text("select 1"))
    assert allocation_db.status().checked_out == 0
