"""The bank's command line, run as `python -m examples.bank` in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from examples.bank import services
from examples.bank.unit_of_work import BankUnitOfWork
from tests.helpers import ROOT, run_python
from uow import Database


def bank(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run one CLI command against the database at ``url``, from the project root."""
    return run_python("-m", "examples.bank", *args, DATABASE_URL=url)


def ok(url: str, *args: str) -> str:
    done = bank(url, *args)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return done.stdout


@pytest.fixture
def url(bank_db: Database, bank_url: str) -> str:
    """The bank database's URL, on empty tables."""
    return bank_url


def test_open_deposit_transfer_statement_audit(url: str) -> None:
    """The commands work end to end and print their results plainly."""
    ann = int(ok(url, "open", "ann", "--initial", "1000"))
    bob = int(ok(url, "open", "bob"))

    assert ok(url, "deposit", str(bob), "250", "--key", "d-1").strip() == (
        f"account {bob} balance 250 (key d-1)"
    )
    out = ok(url, "transfer", str(ann), str(bob), "400", "--key", "t-1")
    assert f"400 from account {ann} to account {bob} (key t-1)" in out
    again = ok(url, "transfer", str(ann), str(bob), "400", "--key", "t-1")
    assert "already done earlier, nothing changed" in again

    statement = ok(url, "statement", str(bob)).splitlines()
    assert statement[0] == f"account {bob} (bob) balance 650"
    assert len(statement) == 3
    assert "deposit" in statement[1]
    assert "+250" in statement[1]
    assert "transfer in" in statement[2]
    assert f"account {ann}" in statement[2]

    audit = ok(url, "audit")
    assert audit.startswith("ok: 2 accounts, balances 1250, deposits 1250")


def test_deposit_without_key_gets_a_fresh_one(url: str) -> None:
    """Without --key each deposit is new, so running it twice deposits twice."""
    ann = int(ok(url, "open", "ann"))
    ok(url, "deposit", str(ann), "5")
    assert f"account {ann} balance 10 " in ok(url, "deposit", str(ann), "5")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["transfer", "1", "2", "5000"], "error: account 1 has 100 cents, 5000 needed"),
        (["deposit", "99", "5"], "error: account 99 does not exist"),
        (["deposit", "1", "0"], "error: amount must be from 1 to"),
        (["transfer", "1", "1", "5"], "error: cannot transfer from account 1 to itself"),
    ],
)
def test_domain_error_exits_1_with_one_line(
    bank_db: Database, url: str, args: list[str], message: str
) -> None:
    """A domain error exits 1 with a one-line message on stderr and no traceback."""
    assert services.open_account(BankUnitOfWork(bank_db), "ann", 100) == 1
    assert services.open_account(BankUnitOfWork(bank_db), "bob") == 2

    done = bank(url, *args)

    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.startswith(message)
    assert done.stderr.count("\n") == 1
    assert "Traceback" not in done.stderr


def test_reused_key_exits_1(bank_db: Database, url: str) -> None:
    """A key reused with other parameters exits 1 and names the key."""
    ann = services.open_account(BankUnitOfWork(bank_db), "ann")
    services.deposit(BankUnitOfWork(bank_db), ann, 5, key="k")

    done = bank(url, "deposit", str(ann), "6", "--key", "k")

    assert done.returncode == 1
    assert done.stderr.startswith("error: idempotency key 'k' was already used")


@pytest.mark.parametrize("args", [[], ["fly"], ["deposit", "1"], ["deposit", "one", "5"], ["open"]])
def test_usage_error_exits_2(url: str, args: list[str]) -> None:
    """A missing command, unknown command or bad argument exits 2 with argparse's usage."""
    done = bank(url, *args)

    assert done.returncode == 2
    assert "usage:" in done.stderr


def test_migrate_is_a_no_op_on_an_up_to_date_database(url: str) -> None:
    """`migrate` runs alembic's upgrade to head from the project root and says so."""
    assert ok(url, "migrate").strip() == "database is at the latest revision"


def test_serve_runs_the_api(url: str) -> None:
    """`serve` starts uvicorn with the API on the given port; SIGTERM stops it cleanly."""
    with socket.socket() as probe:  # a free port, released for the server to take
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UOW_", "DATABASE_URL"))}
    server = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "examples.bank", "serve", "--port", str(port)],
        cwd=ROOT,
        env={**env, "DATABASE_URL": url},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert server.poll() is None, server.communicate()
            assert time.monotonic() < deadline, "the server did not answer within 30 s"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                    health = json.loads(r.read())
                break
            except OSError:
                time.sleep(0.1)
    finally:
        server.terminate()
        _, stderr = server.communicate(timeout=30)

    assert health["status"] == "ok"
    # uvicorn shuts down gracefully, then re-raises the signal so the exit status tells
    # the supervisor it was stopped by SIGTERM.
    assert "Finished server process" in stderr
    assert server.returncode == -signal.SIGTERM, stderr
