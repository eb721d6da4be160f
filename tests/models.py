"""Mapped classes used by the test suite."""

from __future__ import annotations

from sqlalchemy import CheckConstraint, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from uow import Repository, UnitOfWork


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "uow_test_items"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    qty: Mapped[int] = mapped_column(default=0)


class Account(Base):
    __tablename__ = "uow_test_accounts"
    __table_args__ = (CheckConstraint("balance >= 0", name="balance_not_negative"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    owner: Mapped[str] = mapped_column(String(100))
    balance: Mapped[int] = mapped_column(default=0)


class ItemRepository(Repository[Item]):
    def named(self, name: str) -> Item | None:
        found = self.list(name=name)
        return found[0] if found else None


class ShopUnitOfWork(UnitOfWork):
    items: ItemRepository
    accounts: Repository[Account]
