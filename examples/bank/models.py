"""The bank's tables. Money is an integer number of cents; balances never go negative."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Named constraints, so migrations can drop and alter them by name.
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Account(Base):
    __tablename__ = "accounts"
    __table_args__ = (CheckConstraint("balance >= 0", name="balance_not_negative"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    owner: Mapped[str] = mapped_column(String(200))
    balance: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class LedgerEntry(Base):
    """One movement of money: a deposit (no source) or a transfer between two accounts."""

    __tablename__ = "ledger"
    __table_args__ = (
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint("source_id IS DISTINCT FROM target_id", name="distinct_accounts"),
        Index("ix_ledger_source_id", "source_id"),
        Index("ix_ledger_target_id", "target_id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(String(100), unique=True)
    source_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id"))
    target_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    amount: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class StatementRequest(Base):
    """A monthly statement asked for: rendered to a file by a job (see ``statements.py``).

    At most one request per account and month is pending at a time (a partial unique
    index): a repeated request finds the pending one and returns its job.
    """

    __tablename__ = "statement_requests"
    __table_args__ = (
        CheckConstraint("status IN ('pending', 'done', 'failed')", name="status_known"),
        CheckConstraint("extract(day FROM month) = 1", name="month_first_day"),
        Index(
            "uq_statement_requests_pending",
            "account_id",
            "month",
            unique=True,
            postgresql_where=text("status = 'pending'"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    month: Mapped[date] = mapped_column(Date)
    """The month's first day."""
    status: Mapped[str] = mapped_column(String(10), default="pending", server_default="pending")
    job_id: Mapped[int | None] = mapped_column(BigInteger)
    """procrastinate's job (``procrastinate_jobs.id``) rendering it."""
    path: Mapped[str | None] = mapped_column(Text)
    """The rendered file, once done."""
    movements: Mapped[int | None] = mapped_column(Integer)
    complete: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    """Rendered after the month ended: final, so a later request reuses it."""
    requested_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    done_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
