"""The book's domain model (chapter 7): Product, Batch, OrderLine, with SQLAlchemy 2 mappings.

The book maps plain classes imperatively (``mapper(model.Batch, batches, ...)``) with
SQLAlchemy 1.x; here the same classes, tables, columns and behaviour are declarative
SQLAlchemy 2 models. Two changes, both for the port: the tables live in their own
schema, ``cosmicpython``, apart from the suite's tables, and ``batches.reference`` is
unique, which the book's ``get(reference=...)`` assumes without declaring it.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from sqlalchemy import Column, ForeignKey, Integer, MetaData, String, Table
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from uow import Repository, UnitOfWork

SCHEMA = "cosmicpython"


class Base(DeclarativeBase):
    metadata = MetaData(schema=SCHEMA)


allocations = Table(
    "allocations",
    Base.metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("orderline_id", ForeignKey("order_lines.id")),
    Column("batch_id", ForeignKey("batches.id")),
)


class OutOfStock(Exception):
    pass


class OrderLine(Base):
    """A value object: two lines with the same order, sku and quantity are equal."""

    __tablename__ = "order_lines"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    sku: Mapped[str] = mapped_column(String(255))
    qty: Mapped[int]
    orderid: Mapped[str] = mapped_column(String(255))

    def __init__(self, orderid: str, sku: str, qty: int) -> None:
        self.orderid, self.sku, self.qty = orderid, sku, qty

    # The book's OrderLine is a dataclass(unsafe_hash=True) kept in a set.
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, OrderLine):
            return NotImplemented
        return (self.orderid, self.sku, self.qty) == (other.orderid, other.sku, other.qty)

    def __hash__(self) -> int:
        return hash((self.orderid, self.sku, self.qty))


class Batch(Base):
    __tablename__ = "batches"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    reference: Mapped[str] = mapped_column(String(255), unique=True)
    sku: Mapped[str] = mapped_column(ForeignKey("products.sku"))
    _purchased_quantity: Mapped[int] = mapped_column("_purchased_quantity")
    eta: Mapped[date | None]
    _allocations: Mapped[set[OrderLine]] = relationship(secondary=allocations, collection_class=set)

    def __init__(self, ref: str, sku: str, qty: int, eta: date | None) -> None:
        self.reference, self.sku, self.eta = ref, sku, eta
        self._purchased_quantity = qty
        self._allocations = set()

    def __repr__(self) -> str:
        return f"<Batch {self.reference}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Batch) and other.reference == self.reference

    def __hash__(self) -> int:
        return hash(self.reference)

    def __gt__(self, other: Batch) -> bool:
        if self.eta is None:
            return False
        if other.eta is None:
            return True
        return self.eta > other.eta

    def allocate(self, line: OrderLine) -> None:
        if self.can_allocate(line):
            self._allocations.add(line)

    def deallocate(self, line: OrderLine) -> None:
        if line in self._allocations:
            self._allocations.remove(line)

    @property
    def allocated_quantity(self) -> int:
        return sum(line.qty for line in self._allocations)

    @property
    def available_quantity(self) -> int:
        return self._purchased_quantity - self.allocated_quantity

    def can_allocate(self, line: OrderLine) -> bool:
        return self.sku == line.sku and self.available_quantity >= line.qty


class Product(Base):
    """The aggregate: every change to a product's batches goes through it."""

    __tablename__ = "products"

    sku: Mapped[str] = mapped_column(String(255), primary_key=True)
    version_number: Mapped[int] = mapped_column(server_default="0")
    batches: Mapped[list[Batch]] = relationship()

    def __init__(self, sku: str, batches: list[Batch], version_number: int = 0) -> None:
        self.sku, self.batches, self.version_number = sku, batches, version_number

    def allocate(self, line: OrderLine) -> str:
        try:
            batch = next(b for b in sorted(self.batches) if b.can_allocate(line))
        except StopIteration:
            raise OutOfStock(f"Out of stock for sku {line.sku}") from None
        batch.allocate(line)
        self.version_number += 1
        return batch.reference


class AllocationUnitOfWork(UnitOfWork):
    """The book's SqlAlchemyUnitOfWork: its repositories, and REPEATABLE READ by default.

    The book sets ``isolation_level="REPEATABLE READ"`` on its engine; uow sets it per
    unit, so here it is this unit of work's default.
    """

    products: Repository[Product]
    batches: Repository[Batch]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("isolation", "REPEATABLE READ")
        super().__init__(*args, **kwargs)
