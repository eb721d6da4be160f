"""Fixtures for the job tests: a database with procrastinate's schema, and an app on it.

- ``jobs_url`` (one per module): a new database on the test server, migrated with
  ``alembic upgrade head`` (uow.migrations), so it has the bank's tables and
  procrastinate's schema from migrations/versions/8d9434178edf_procrastinate_schema.py;
  dropped at the end of the module.
- ``jobs_admin``: an autocommit side connection to that database, for reading
  ``procrastinate_jobs`` as a worker would see it.
- ``jobs_db``: a :class:`uow.Database` on it (a unique application_name; it must end
  with nothing checked out), installed as the process default, with procrastinate's
  tables (and the bank's) emptied first.
- ``jobs_app``: ``uow.jobs.app(jobs_db)``, not opened; register tasks on it in the
  test (``@jobs_app.task(name="...")``). Deferring in a unit of work needs no opening.
- ``queued(admin)``: the rows of ``procrastinate_jobs``, oldest first, as dicts.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import procrastinate
import psycopg
import pytest
from psycopg.rows import dict_row

import uow.jobs
from tests.conftest import MakeDatabase, as_default, fresh_database, libpq_dsn
from uow import Database

PROCRASTINATE_TABLES = (
    "procrastinate_events, procrastinate_periodic_defers, procrastinate_jobs, procrastinate_workers"
)


@pytest.fixture(scope="module")
def jobs_url(postgres_url: str) -> Iterator[str]:
    """A fresh database for the module, migrated to head (procrastinate's schema included)."""
    with fresh_database(postgres_url, "jobs", migrate=True) as url:
        yield url


@pytest.fixture
def jobs_admin(jobs_url: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit side connection to the jobs database."""
    with psycopg.connect(libpq_dsn(jobs_url), autocommit=True) as conn:
        yield conn


@pytest.fixture
def jobs_db(
    jobs_url: str, jobs_admin: psycopg.Connection[Any], make_database: MakeDatabase
) -> Iterator[Database]:
    """A Database on the jobs database, emptied, installed as the process default."""
    jobs_admin.execute(
        f"TRUNCATE {PROCRASTINATE_TABLES}, accounts, ledger RESTART IDENTITY CASCADE"
    )
    with as_default(make_database(url=jobs_url)) as database:
        yield database


@pytest.fixture
def jobs_app(jobs_db: Database) -> procrastinate.App:
    """A procrastinate app on ``jobs_db`` (not opened); tests register their tasks on it."""
    return uow.jobs.app(jobs_db)


def queued(admin: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """The rows of procrastinate_jobs as another connection sees them, oldest first."""
    with admin.cursor(row_factory=dict_row) as cursor:
        return cursor.execute("SELECT * FROM procrastinate_jobs ORDER BY id").fetchall()
