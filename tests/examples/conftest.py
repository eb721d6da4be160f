"""Fixtures for the example bank: a database migrated with alembic, emptied per test."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.conftest import MakeDatabase, as_default, fresh_database, libpq_dsn
from uow import Database


@pytest.fixture(scope="module")
def bank_url(postgres_url: str) -> Iterator[str]:
    """A fresh database for the module, with the bank schema from `alembic upgrade head`."""
    with fresh_database(postgres_url, "bank", migrate=True) as url:
        yield url


@pytest.fixture
def empty_url(postgres_url: str) -> Iterator[str]:
    """A database nobody migrated."""
    with fresh_database(postgres_url, "empty", migrate=False) as url:
        yield url


@pytest.fixture
def bank_admin(bank_url: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit side connection to the bank database."""
    with psycopg.connect(libpq_dsn(bank_url), autocommit=True) as conn:
        yield conn


@pytest.fixture
def bank_db(
    bank_url: str, bank_admin: psycopg.Connection[Any], make_database: MakeDatabase
) -> Iterator[Database]:
    """A Database on empty bank tables, installed as the process default."""
    bank_admin.execute("TRUNCATE accounts, ledger RESTART IDENTITY CASCADE")
    with as_default(make_database(url=bank_url)) as database:
        yield database
