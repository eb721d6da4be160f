"""Fixtures for the example bank: a database migrated with alembic, emptied per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import make_url

from tests.conftest import MakeDatabase, libpq_dsn
from uow import Database, migrations
from uow._default import _swap_default


@pytest.fixture(scope="module")
def bank_url(postgres_url: str) -> Iterator[str]:
    """A fresh database for the module, with the bank schema from `alembic upgrade head`."""
    name = f"bank_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(libpq_dsn(postgres_url), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    try:
        migrations.upgrade(url, "head")
        yield url
    finally:
        with psycopg.connect(libpq_dsn(postgres_url), autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture
def empty_url(postgres_url: str) -> Iterator[str]:
    """A database nobody migrated."""
    name = f"empty_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(libpq_dsn(postgres_url), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(libpq_dsn(postgres_url), autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


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
    database = make_database(url=bank_url)
    previous = _swap_default(database)
    try:
        yield database
    finally:
        _swap_default(previous)
