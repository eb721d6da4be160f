"""The migration that applies procrastinate's schema: up, down, and what it leaves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
from procrastinate.schema import SchemaManager

from uow import migrations

ROOT = Path(__file__).resolve().parents[2]
VERSIONS = ROOT / "migrations" / "versions"
BANK = "9df246da5ce1"
OBJECTS = """
SELECT (SELECT count(*) FROM pg_class WHERE relname LIKE 'procrastinate%%'),
       (SELECT count(*) FROM pg_proc WHERE proname LIKE 'procrastinate%%'),
       (SELECT count(*) FROM pg_type WHERE typname LIKE 'procrastinate%%')
"""


def procrastinate_objects(admin: psycopg.Connection[Any]) -> tuple[int, ...]:
    """How many relations, functions and types of procrastinate's the database has."""
    row = admin.execute(OBJECTS).fetchone()
    assert row is not None
    return tuple(row)


def test_downgrade_drops_every_object_and_upgrade_restores_them(
    jobs_url: str, jobs_admin: psycopg.Connection[Any]
) -> None:
    """Down one step: no table, function or type of procrastinate's is left; up again: all back."""
    at_head = procrastinate_objects(jobs_admin)
    assert all(at_head)
    migrations.downgrade(jobs_url, BANK)
    assert procrastinate_objects(jobs_admin) == (0, 0, 0)
    migrations.upgrade(jobs_url, "head")
    assert procrastinate_objects(jobs_admin) == at_head
    migrations.check(jobs_url)  # procrastinate's tables are not drift


def test_the_vendored_schema_is_the_installed_procrastinates_or_a_migration_is_due() -> None:
    """The migration's SQL is procrastinate's schema.sql of the version it names; when the
    installed procrastinate's differs, a migration applying its sql/migrations is due."""
    vendored = (VERSIONS / "procrastinate_3.10.0_schema.sql").read_text(encoding="utf-8")
    header, _, body = vendored.partition("\n\n")
    assert header.startswith("-- procrastinate 3.10.0's schema")
    assert body == SchemaManager.get_schema(), (
        "the installed procrastinate's schema differs from the one migrated: add a migration "
        "that runs its files in procrastinate/sql/migrations/ newer than 03.04.00_50 "
        "(see migrations/versions/8d9434178edf_procrastinate_schema.py)"
    )
