"""The benchmark's two tables: their DDL, their ORM mapping, and the seeding."""

from __future__ import annotations

from typing import cast

import psycopg
from sqlalchemy import BigInteger, Integer, Table, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = ["ACCOUNTS", "ROWS", "Account", "Base", "Row", "create_schema", "truncate_rows"]

# Plain DDL, so the schema is exactly what the brief says whichever stack reads it.
DDL = (
    "DROP TABLE IF EXISTS bench_accounts, bench_rows",
    "CREATE TABLE bench_accounts (id bigint PRIMARY KEY, balance bigint NOT NULL)",
    "CREATE TABLE bench_rows (id bigserial PRIMARY KEY, a int NOT NULL, b text NOT NULL,"
    " c bigint NOT NULL DEFAULT 0)",
)

INITIAL_BALANCE = 1_000_000


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "bench_accounts"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    balance: Mapped[int] = mapped_column(BigInteger)


class Row(Base):
    __tablename__ = "bench_rows"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    a: Mapped[int] = mapped_column(Integer)
    b: Mapped[str] = mapped_column(Text)
    c: Mapped[int] = mapped_column(BigInteger, server_default="0")


ACCOUNTS = cast(Table, Account.__table__)
ROWS = cast(Table, Row.__table__)


def create_schema(conninfo: str, accounts: int) -> None:
    """(Re)create both tables and seed ``accounts`` rows into bench_accounts."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        for statement in DDL:
            conn.execute(statement)
        conn.execute(
            "INSERT INTO bench_accounts (id, balance)"
            " SELECT g, %s FROM generate_series(1, %s) AS g",
            (INITIAL_BALANCE, accounts),
        )
        conn.execute("VACUUM ANALYZE bench_accounts")


def truncate_rows(conninfo: str) -> int:
    """Empty bench_rows; returns how many rows it held."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM bench_rows").fetchone()
        conn.execute("TRUNCATE bench_rows RESTART IDENTITY")
    return int(row[0]) if row else 0
