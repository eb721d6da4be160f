"""/health tells a database whose schema is not the code's from a healthy one."""

from __future__ import annotations

from typing import Any

import psycopg

from examples.bank.api import create_app
from examples.bank.health import SchemaCheck
from tests.conftest import MakeDatabase
from tests.examples.test_api import call, serving
from uow import Database


def test_unmigrated_database_is_503_with_what_to_run(
    empty_url: str, make_database: MakeDatabase
) -> None:
    """No alembic_version table: 503, status "not migrated", and the command to run."""
    with serving(create_app(make_database(url=empty_url))) as api:
        status, _, body = call("GET", f"{api}/health")

    assert status == 503
    assert body["status"] == "not migrated"
    assert body["reason"] == (
        "the database schema is not migrated; run `python -m examples.bank migrate` first"
    )


def test_database_at_another_revision_is_503(
    bank_db: Database, bank_admin: psycopg.Connection[Any]
) -> None:
    """A database at another revision than the code's head: 503 naming both revisions."""
    (head,) = SchemaCheck().heads()
    bank_admin.execute("UPDATE alembic_version SET version_num = 'older'")
    try:
        with serving(create_app(bank_db)) as api:
            status, _, body = call("GET", f"{api}/health")
    finally:
        bank_admin.execute("UPDATE alembic_version SET version_num = %s", (head,))

    assert status == 503
    assert body["status"] == "not migrated"
    assert body["reason"].startswith(
        f"the database schema is at revision older, this code needs {head};"
    )


def test_migrated_database_is_ok_without_a_reason(bank_db: Database) -> None:
    """At the head: 200, status "ok", no reason."""
    with serving(create_app(bank_db)) as api:
        status, _, body = call("GET", f"{api}/health")

    assert (status, body["status"], body["reason"]) == (200, "ok", None)
