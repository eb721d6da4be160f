"""`uow doctor`: the report, its JSON form and its exit codes, against a real PostgreSQL."""

from __future__ import annotations

import io
import json
import os
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import make_url

from tests.conftest import libpq_dsn
from tests.helpers import run_python
from uow import Settings
from uow.__main__ import main
from uow._ops.doctor import diagnose, run

JSON_KEYS = {
    "application_name",
    "budget",
    "connections",
    "exit_code",
    "hosts",
    "idle_in_transaction",
    "longest_queries",
    "longest_transactions",
    "pgbouncer",
    "processes",
    "replicas",
    "replication",
    "server",
    "settings",
    "url",
    "warnings",
}


def doctor(
    postgres_url: str, app_name: str, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run `python -m uow doctor` as a subprocess with DATABASE_URL and the given UOW_* env."""
    return run_python(
        "-m",
        "uow",
        "doctor",
        *args,
        DATABASE_URL=postgres_url,
        UOW_APPLICATION_NAME=app_name,
        **env,
    )


@pytest.fixture
def app_connection(postgres_url: str, app_name: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection under the test's application_name, left open for the doctor to see."""
    dsn = libpq_dsn(postgres_url)
    with psycopg.connect(dsn, application_name=app_name, autocommit=True) as conn:
        yield conn


def test_healthy_setup_exits_0_and_shows_limits_and_connections(
    postgres_url: str, app_name: str, app_connection: psycopg.Connection[Any]
) -> None:
    """A healthy setup exits 0 and shows max_connections and the application's connections."""
    result = doctor(postgres_url, app_name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "max_connections" in result.stdout
    lines = [line.split() for line in result.stdout.splitlines()]
    assert [app_name, "-", "idle", "1"] in lines  # "-": not a uow process
    assert "No warnings." in result.stdout


def test_json_parses_and_has_stable_keys(
    postgres_url: str, app_name: str, app_connection: psycopg.Connection[Any]
) -> None:
    """`--json` prints one JSON document with the documented keys and the same facts."""
    result = doctor(postgres_url, app_name, "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data) == JSON_KEYS
    assert data["exit_code"] == 0
    row = app_connection.execute("SELECT current_setting('max_connections')::int").fetchone()
    assert row is not None
    assert data["server"]["max_connections"] == row[0]
    idle = {"application_name": app_name, "kind": "", "state": "idle", "count": 1}
    assert idle in data["connections"]
    assert set(data["budget"]) >= {"needed", "available", "exceeded"}
    assert data["url"] == Settings(url=postgres_url).masked_url


def test_idle_in_transaction_is_listed_and_needs_action(
    postgres_url: str, app_name: str, app_connection: psycopg.Connection[Any]
) -> None:
    """A session idle in transaction past --idle-threshold is listed and exits 1."""
    app_connection.execute("BEGIN")
    app_connection.execute("SELECT 1")
    time.sleep(1)
    pid = app_connection.info.backend_pid
    result = doctor(postgres_url, app_name, "--idle-threshold", "0.5")
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"pid {pid} ({app_name}) idle in transaction" in result.stdout
    data = json.loads(doctor(postgres_url, app_name, "--json", "--idle-threshold", "0.5").stdout)
    stuck = [s for s in data["idle_in_transaction"] if s["pid"] == pid]
    assert stuck and stuck[0]["seconds"] >= 1 and stuck[0]["query"] == "SELECT 1"
    assert any(s["pid"] == pid for s in data["longest_transactions"])
    assert "idle_in_transaction" in [w["code"] for w in data["warnings"]]


def test_idle_in_transaction_under_threshold_is_listed_without_action(
    postgres_url: str, app_name: str, app_connection: psycopg.Connection[Any]
) -> None:
    """Under the default 60 s threshold an idle transaction is listed but exits 0."""
    app_connection.execute("BEGIN")
    app_connection.execute("SELECT 1")
    settings = Settings(url=postgres_url, application_name=app_name)
    report = diagnose(settings)
    assert app_connection.info.backend_pid in [s.pid for s in report.idle_in_transaction]
    assert report.exit_code == 0


def test_budget_exceeded_warns_and_exits_1(postgres_url: str, app_name: str) -> None:
    """More processes than max_connections can serve report needed vs available and exit 1."""
    # Settings accept at most 10000 processes; 10000 x 5 is far above any max_connections here.
    result = doctor(postgres_url, app_name, UOW_PROCESSES="10000")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "connection budget exceeded: 10000 processes x 5 = 50000 needed" in result.stdout
    data = json.loads(doctor(postgres_url, app_name, "--json", UOW_PROCESSES="10000").stdout)
    assert data["budget"]["exceeded"] is True
    assert data["budget"]["needed"] == 50000


def test_statement_timeout_disabled_warns_and_exits_1(postgres_url: str, app_name: str) -> None:
    """UOW_STATEMENT_TIMEOUT=0 is reported with advice and exits 1."""
    result = doctor(postgres_url, app_name, UOW_STATEMENT_TIMEOUT="0")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "statement_timeout is disabled (UOW_STATEMENT_TIMEOUT=0)" in result.stdout


def test_advisories_do_not_change_the_exit_code(
    postgres_url: str, app_name: str, capsys: pytest.CaptureFixture[str], monkeypatch: Any
) -> None:
    """Pre-ping off, recycle -1 and overflow are advice only: the entry point returns 0."""
    for name in list(os.environ):
        if name.startswith("UOW_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("DATABASE_URL", postgres_url)
    monkeypatch.setenv("UOW_APPLICATION_NAME", app_name)
    monkeypatch.setenv("UOW_PRE_PING", "false")
    monkeypatch.setenv("UOW_POOL_RECYCLE", "-1")
    monkeypatch.setenv("UOW_MAX_OVERFLOW", "2")
    assert main(["doctor", "--json"]) == 0
    codes = [w["code"] for w in json.loads(capsys.readouterr().out)["warnings"]]
    assert codes == ["pre_ping_off", "pool_recycle_disabled", "overflow_churn"]


def test_unreachable_server_exits_2_without_the_password(postgres_url: str, app_name: str) -> None:
    """An unreachable server exits 2 with one line naming the masked URL, never the password."""
    url = "postgresql://app:s3cret-pw@127.0.0.1:1/shop"
    result = doctor(postgres_url, app_name, "--url", url)
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "127.0.0.1:1" in result.stderr
    assert "s3cret-pw" not in result.stderr + result.stdout


def test_run_entry_point_reports_unreachable(app_name: str) -> None:
    """The Python entry point returns 2 and writes only the masked URL for a dead server."""
    settings = Settings(
        url="postgresql://app:s3cret-pw@127.0.0.1:1/shop", application_name=app_name
    )
    out, err = io.StringIO(), io.StringIO()
    assert run(settings, out=out, err=err) == 2
    assert "s3cret-pw" not in err.getvalue() and "***" in err.getvalue()


def test_a_timeout_set_on_the_role_is_not_reported_disabled(
    postgres_url: str, admin: psycopg.Connection[Any], app_name: str
) -> None:
    """uow's timeout off but the role's on (the PgBouncer recipe): no warning for that one."""
    role = f"uow_doctor_{app_name[-12:]}"
    # The server's password for the new role too, so that the URL's works for it.
    create = sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}")
    admin.execute(create.format(sql.Identifier(role), make_url(postgres_url).password))
    try:
        admin.execute(f"ALTER ROLE \"{role}\" SET statement_timeout = '5s'")
        url = make_url(postgres_url).set(username=role).render_as_string(hide_password=False)
        settings = Settings(url=url, statement_timeout=0, lock_timeout=0, application_name=app_name)
        report = diagnose(settings)
        codes = {w.code for w in report.warnings}
        assert report.server["default_statement_timeout"] == "5s"
        assert "statement_timeout_disabled" not in codes
        assert "lock_timeout_disabled" in codes
    finally:
        admin.execute(f'DROP ROLE "{role}"')


def test_the_port_reached_is_compared_not_the_urls(
    postgres_url: str, app_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A URL without a port (libpq takes PGPORT): the server's port is the one reached, so
    no "proxy in between" (the URL's default 5432 was compared before)."""
    server = make_url(postgres_url)
    monkeypatch.setenv("PGPORT", str(server.port))
    url = server._replace(port=None).render_as_string(hide_password=False)
    report = diagnose(Settings(url=url, application_name=app_name))
    assert report.server["port"] == server.port
    assert report.pgbouncer == {"detected": False}
    assert "proxy_in_between" not in {w.code for w in report.warnings}
