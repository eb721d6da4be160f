"""Migrations as the schema's owner, the application as a role that may only touch rows.

Real roles on the test server: an owner (``UOW_MIGRATIONS_URL``) that owns the database
and its public schema, and an application role (``DATABASE_URL``) created with no rights
at all, whose name needs quoting (capitals and a double quote).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import errors, sql
from sqlalchemy import make_url

from tests.conftest import libpq_dsn
from tests.examples.test_migrations import PROCRASTINATE_TABLES
from tests.helpers import ROOT, run_python
from uow.__main__ import main

INI = str(ROOT / "alembic.ini")


@dataclass(frozen=True)
class Roles:
    """A fresh database owned by ``owner``; ``app`` has no rights on it."""

    owner: str
    app: str
    owner_url: str
    app_url: str
    superuser_url: str


@pytest.fixture
def roles(postgres_url: str, admin: psycopg.Connection[Any]) -> Iterator[Roles]:
    """Two login roles and a database owned by the first; all dropped afterwards."""
    tag = uuid.uuid4().hex[:10]
    owner, app, database = f"uow_owner_{tag}", f'Uow_App"{tag}"', f"uow_roles_{tag}"
    password = uuid.uuid4().hex
    for role in (owner, app):
        admin.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(password)
            )
        )
    admin.execute(
        sql.SQL("CREATE DATABASE {} OWNER {}").format(
            sql.Identifier(database), sql.Identifier(owner)
        )
    )
    base = make_url(postgres_url).set(database=database)
    superuser_url = base.render_as_string(hide_password=False)
    with psycopg.connect(libpq_dsn(superuser_url), autocommit=True) as conn:
        # PostgreSQL 15 gives the schema to the database's owner; older ones to the
        # superuser, with CREATE for everyone. Make both look like 15.
        conn.execute(sql.SQL("ALTER SCHEMA public OWNER TO {}").format(sql.Identifier(owner)))
        conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")

    def url(role: str) -> str:
        return base.set(username=role, password=password).render_as_string(hide_password=False)

    try:
        yield Roles(owner, app, url(owner), url(app), superuser_url)
    finally:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database))
        )
        for role in (app, owner):
            admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No setting leaks in from the developer's shell into the in-process `uow migrate`."""
    for variable in ("DATABASE_URL", "UOW_MIGRATIONS_URL", "UOW_MIGRATIONS_GRANT_TO"):
        monkeypatch.delenv(variable, raising=False)


def bank(*args: str, **env: str) -> str:
    """Run `python -m examples.bank` with ``env``; return its stdout, failing on an error."""
    done = run_python("-m", "examples.bank", *args, **env)
    assert done.returncode == 0, done.stderr
    return done.stdout


def refused(url: str, statement: str) -> None:
    """``statement`` run by ``url``'s role fails with SQLSTATE 42501."""
    with (
        psycopg.connect(libpq_dsn(url), autocommit=True) as conn,
        pytest.raises(errors.InsufficientPrivilege),
    ):
        conn.execute(statement)


def test_bank_migrate_runs_as_the_owner_and_the_application_role_gets_row_rights(
    roles: Roles,
) -> None:
    """`python -m examples.bank migrate` migrates as UOW_MIGRATIONS_URL's role; the app role
    can then bank, also on a table the owner creates later, but cannot change the schema."""
    out = bank("migrate", DATABASE_URL=roles.app_url, UOW_MIGRATIONS_URL=roles.owner_url)
    assert "latest revision" in out
    with psycopg.connect(libpq_dsn(roles.superuser_url)) as conn:
        owners = dict(
            conn.execute(
                "SELECT tablename, tableowner FROM pg_tables WHERE schemaname = 'public'"
            ).fetchall()
        )
    assert owners == dict.fromkeys(
        ("accounts", "ledger", "statement_requests", "alembic_version", *PROCRASTINATE_TABLES),
        roles.owner,
    )

    app = {"DATABASE_URL": roles.app_url}
    ann = bank("open", "ann", "--initial", "100", **app).strip()
    bob = bank("open", "bob", **app).strip()
    assert "40 from account" in bank("transfer", ann, bob, "40", **app)
    assert bank("audit", **app).startswith("ok: 2 accounts, balances 100")

    with psycopg.connect(libpq_dsn(roles.owner_url), autocommit=True) as conn:
        conn.execute("CREATE TABLE later (id bigserial PRIMARY KEY, note text NOT NULL)")
    with psycopg.connect(libpq_dsn(roles.app_url), autocommit=True) as conn:
        conn.execute("INSERT INTO later (note) VALUES ('default privileges')")
        assert conn.execute("SELECT id, note FROM later").fetchall() == [(1, "default privileges")]
        assert conn.execute("SELECT count(*) FROM alembic_version").fetchone() == (1,)

    for statement in (
        "DROP TABLE later",
        "ALTER TABLE accounts ADD COLUMN nickname text",
        "TRUNCATE ledger",
        "CREATE TABLE mine (id int)",
        "UPDATE alembic_version SET version_num = 'forged'",
    ):
        refused(roles.app_url, statement)


def test_migrate_as_the_application_role_reports_permission_denied(
    roles: Roles, capsys: pytest.CaptureFixture[str]
) -> None:
    """Both CLIs run as a role without CREATE say "permission denied" and the fix, not
    "cannot reach": the bank exits 1, `uow migrate` exits 3; nothing is created."""
    done = run_python("-m", "examples.bank", "migrate", DATABASE_URL=roles.app_url)
    assert done.returncode == 1
    assert done.stderr.startswith("error: permission denied for schema public: role ")
    assert "UOW_MIGRATIONS_URL" in done.stderr and "cannot reach" not in done.stderr
    assert len(done.stderr.splitlines()) == 1

    assert main(["migrate", "--url", roles.app_url, "--config", INI, "upgrade"]) == 3
    err = capsys.readouterr().err
    assert "permission denied for schema public" in err and "cannot reach" not in err
    assert make_url(roles.app_url).password not in err
    with psycopg.connect(libpq_dsn(roles.superuser_url)) as conn:
        assert conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        ).fetchone() == (0,)


def test_uow_migrate_grants_on_upgrade_and_downgrade_base_revokes(
    roles: Roles, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`uow migrate` takes UOW_MIGRATIONS_URL and grants DATABASE_URL's role; the app role
    cannot downgrade (exit 3); the owner's `downgrade base` leaves nothing that would stop
    DROP ROLE; upgrading again grants again."""
    monkeypatch.setenv("DATABASE_URL", roles.app_url)
    monkeypatch.setenv("UOW_MIGRATIONS_URL", roles.owner_url)
    migrate = ["migrate", "--config", INI]
    can_insert = "SELECT has_table_privilege(%s, 'accounts', 'INSERT')"

    assert main([*migrate, "upgrade"]) == 0
    assert main([*migrate, "check"]) == 0
    with psycopg.connect(libpq_dsn(roles.superuser_url)) as conn:
        assert conn.execute(can_insert, (roles.app,)).fetchone() == (True,)

    assert main(["migrate", "--url", roles.app_url, "--config", INI, "downgrade", "base"]) == 3
    assert "must be owner of" in capsys.readouterr().err

    assert main([*migrate, "downgrade", "base"]) == 0
    with psycopg.connect(libpq_dsn(roles.superuser_url)) as conn:
        assert conn.execute("SELECT count(*) FROM pg_default_acl").fetchone() == (0,)
        # A grant or default privilege left behind would make DROP ROLE fail.
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(roles.app)))
        conn.rollback()

    assert main([*migrate, "upgrade"]) == 0
    with psycopg.connect(libpq_dsn(roles.superuser_url)) as conn:
        assert conn.execute(can_insert, (roles.app,)).fetchone() == (True,)


def test_a_named_role_that_does_not_exist_stops_the_migration(
    roles: Roles, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """UOW_MIGRATIONS_GRANT_TO naming a missing role fails the step (exit 2, rolled back)."""
    monkeypatch.setenv("UOW_MIGRATIONS_GRANT_TO", "uow_nobody")
    assert main(["migrate", "--url", roles.owner_url, "--config", INI, "upgrade"]) == 2
    assert "role 'uow_nobody': it does not exist" in capsys.readouterr().err
    with psycopg.connect(libpq_dsn(roles.superuser_url)) as conn:
        tables = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        assert {row[0] for row in tables} <= {"alembic_version"}


def test_a_database_url_user_missing_on_the_server_is_skipped_with_a_warning(
    roles: Roles, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A DATABASE_URL user that is no role here (a pooler's alias) does not stop the
    migration: it is skipped, and the warning says to set UOW_MIGRATIONS_GRANT_TO."""
    alias = make_url(roles.app_url).set(username="uow_pooler_alias")
    monkeypatch.setenv("DATABASE_URL", alias.render_as_string(hide_password=False))
    monkeypatch.setenv("UOW_MIGRATIONS_URL", roles.owner_url)

    assert main(["migrate", "--config", INI, "upgrade"]) == 0

    warnings = [r.getMessage() for r in caplog.records if r.name == "uow.migrations"]
    assert any("'uow_pooler_alias'" in w and "UOW_MIGRATIONS_GRANT_TO" in w for w in warnings)
