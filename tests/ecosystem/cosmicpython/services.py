"""The book's service layer (chapter 7, ``service_layer/services.py``), unchanged but typed.

The services call ``uow.commit()`` as the book's do; on uow that is optional, since a
block that ends cleanly commits anyway.
"""

from __future__ import annotations

from datetime import date

from tests.ecosystem.cosmicpython.model import AllocationUnitOfWork, Batch, OrderLine, Product


class InvalidSku(Exception):
    pass


def add_batch(ref: str, sku: str, qty: int, eta: date | None, uow: AllocationUnitOfWork) -> None:
    with uow:
        product = uow.products.get(sku)
        if product is None:
            product = Product(sku, batches=[])
            uow.products.add(product)
        product.batches.append(Batch(ref, sku, qty, eta))
        uow.commit()


def allocate(orderid: str, sku: str, qty: int, uow: AllocationUnitOfWork) -> str:
    line = OrderLine(orderid, sku, qty)
    with uow:
        product = uow.products.get(line.sku)
        if product is None:
            raise InvalidSku(f"Invalid sku {line.sku}")
        batchref = product.allocate(line)
        uow.commit()
    return batchref
