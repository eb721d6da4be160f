"""The bank CLI's failures: one line on stderr that says what to do, exit 1, no traceback."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import make_url

from tests.helpers import run_python, start_python
from uow import Database, migrations
from uow.testing import EmbeddedPostgres


def failure(url: str, *args: str) -> str:
    """Run a CLI command that must fail; returns its single stderr line."""
    done = run_python("-m", "examples.bank", *args, DATABASE_URL=url, UOW_CONNECT_TIMEOUT="2")
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    return done.stderr.strip()


@pytest.fixture
def rightless_url(
    bank_db: Database, bank_url: str, bank_admin: psycopg.Connection[Any]
) -> Iterator[str]:
    """The bank database as a role that may log in and nothing more."""
    role, password = f"nobody_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    bank_admin.execute(
        sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            sql.Identifier(role), sql.Literal(password)
        )
    )
    try:
        url = make_url(bank_url).set(username=role, password=password)
        yield url.render_as_string(hide_password=False)
    finally:
        bank_admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,)
        )
        bank_admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


@pytest.mark.parametrize("args", [["open", "ann"], ["statement", "1"], ["audit"]])
def test_schema_missing_says_run_migrate(empty_url: str, args: list[str]) -> None:
    """On a database without the bank's tables, every command says to run migrate first."""
    line = failure(empty_url, *args)

    assert line == (
        "error: the database has no bank tables; run `python -m examples.bank migrate` first"
    )


@pytest.mark.parametrize("args", [["open", "ann"], ["statement", "1"], ["deposit", "1", "5"]])
def test_permission_denied_says_so(rightless_url: str, args: list[str]) -> None:
    """A role without rights on the tables gets "permission denied", not "cannot reach"."""
    line = failure(rightless_url, *args)

    assert line.startswith("error: permission denied for table "), line
    assert "grant" in line
    assert "cannot reach" not in line


def test_unreachable_server_says_so_without_the_password(bank_url: str) -> None:
    """A server nobody listens on: one line naming the host and port, never the password."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    url = make_url(bank_url).set(host="127.0.0.1", port=port)

    line = failure(url.render_as_string(hide_password=False), "audit")

    assert line.startswith("error: could not connect to "), line
    assert f"port {port} failed: Connection refused" in line
    assert not url.password or url.password not in line


def test_wrong_password_says_so() -> None:
    """A refused login says the password failed, in one line."""
    # A throwaway server of its own: the test server may trust every login (CI's second
    # pass runs against one), and then no password is ever wrong.
    with EmbeddedPostgres() as server:
        url = make_url(server.url).set(password="not-the-password")
        line = failure(url.render_as_string(hide_password=False), "audit")

    assert line.startswith("error: could not connect to "), line
    assert "password authentication failed" in line


def test_a_deposit_waits_out_a_server_restart() -> None:
    """A deposit made while the server is down lands once it is back, once."""
    with EmbeddedPostgres() as server:
        migrations.upgrade(server.url, "head")
        env = {"DATABASE_URL": server.url, "UOW_CONNECT_TIMEOUT": "2", "UOW_FAILOVER_WAIT": "30"}
        opened = run_python("-m", "examples.bank", "open", "ann", **env)
        assert opened.returncode == 0, opened.stderr
        account = opened.stdout.strip()
        server.stop("fast")
        deposit = start_python(
            "-m", "examples.bank", "deposit", account, "500", "--key", "k1", **env
        )
        try:
            # The server comes back only once the CLI is known to be waiting for it, however
            # long the interpreter took to start on a loaded machine.
            assert deposit.stderr is not None
            warned = ""
            while "retrying for up to" not in warned and (line := deposit.stderr.readline()):
                warned += line
            assert "retrying for up to 30s" in warned, warned  # uow's one warning
            server.start()
            back = time.monotonic()
            out, err = deposit.communicate(timeout=60)
        finally:
            deposit.kill()
        assert deposit.returncode == 0, warned + err
        assert out.startswith(f"account {account} balance 500 "), out
        assert time.monotonic() - back < 20  # well within UOW_FAILOVER_WAIT of its warning
        again = run_python("-m", "examples.bank", "deposit", account, "500", "--key", "k1", **env)
        assert again.stdout.startswith(f"account {account} balance 500 "), again.stdout
