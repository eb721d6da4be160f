"""Fixtures of the cosmicpython port: the book's tables on the test server, emptied per test."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.ecosystem.cosmicpython.model import SCHEMA, Base
from uow import Database, Settings


@pytest.fixture(scope="session")
def cosmic_tables(postgres_url: str) -> Iterator[str]:
    """The book's tables, in a schema of their own on the session's server.

    Created with ``create_all`` like the suite's own test tables (tests/conftest.py),
    not by alembic: the book's model is test data for this port, not part of any
    application's schema, and its own schema keeps it apart from the suite's tables
    and from the example app's migrated ones.
    """
    with Database(Settings(url=postgres_url)) as database, database.engine.begin() as conn:
        conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        conn.exec_driver_sql(f"CREATE SCHEMA {SCHEMA}")
        Base.metadata.create_all(conn)
    yield ", ".join(table.fullname for table in Base.metadata.sorted_tables)
    with Database(Settings(url=postgres_url)) as database, database.engine.begin() as conn:
        conn.exec_driver_sql(f"DROP SCHEMA {SCHEMA} CASCADE")


@pytest.fixture
def allocation_db(
    database: Database, cosmic_tables: str, admin: psycopg.Connection[Any]
) -> Database:
    """The process-wide default Database (as the book's default session factory), on
    empty tables; it must end with no connection checked out."""
    admin.execute(f"TRUNCATE {cosmic_tables} RESTART IDENTITY CASCADE")
    return database
