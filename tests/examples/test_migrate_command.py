"""`uow migrate`: alembic's commands on the bank's migrations, on a throwaway database."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory
from psycopg import sql
from sqlalchemy import make_url

from tests.conftest import libpq_dsn
from uow.__main__ import main

INI = Path(__file__).resolve().parents[2] / "alembic.ini"
HEAD = ScriptDirectory.from_config(Config(INI)).get_current_head()


@pytest.fixture
def url(postgres_url: str, admin: psycopg.Connection[Any]) -> Iterator[str]:
    """The URL of a new, empty database, dropped after the test."""
    name = f"uow_migrate_{uuid.uuid4().hex[:12]}"
    admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    finally:
        admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def migrate(url: str, *args: str) -> int:
    return main(["migrate", "--url", url, "--config", str(INI), *args])


def tables(url: str) -> set[str]:
    with psycopg.connect(libpq_dsn(url)) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {row[0] for row in rows} - {"alembic_version"}


def test_upgrade_current_check_downgrade(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """upgrade to head, current prints it, check passes, downgrade base empties the schema."""
    assert migrate(url, "current") == 0
    assert capsys.readouterr().out.strip() == "<base>"
    assert migrate(url, "check") == 1
    assert "not at head" in capsys.readouterr().err
    assert migrate(url, "upgrade") == 0
    assert capsys.readouterr().out.strip().endswith(f"<base> -> {HEAD}")
    assert {"accounts", "ledger"} <= tables(url)
    assert migrate(url, "current") == 0
    assert capsys.readouterr().out.strip() == HEAD
    assert migrate(url, "check") == 0
    assert f"at head {HEAD}" in capsys.readouterr().out
    assert migrate(url, "downgrade", "base") == 0
    assert capsys.readouterr().out.strip().endswith(f"{HEAD} -> <base>")
    assert tables(url) == set()


def test_unreachable_server_exits_2_without_the_password(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An unreachable server exits 2 with the masked URL only."""
    assert migrate("postgresql://app:s3cret-pw@127.0.0.1:1/shop", "upgrade") == 2
    err = capsys.readouterr().err
    assert "cannot reach" in err and "127.0.0.1:1" in err and "s3cret-pw" not in err


def test_missing_alembic_ini_says_what_to_do(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing alembic.ini exits 2 and says to run from the project root or pass --config."""
    code = main(["migrate", "--url", url, "--config", str(tmp_path / "alembic.ini"), "current"])
    assert code == 2
    assert "no alembic configuration" in capsys.readouterr().err
