"""`uow top`: the live view, against a real PostgreSQL."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading

import psycopg
import pytest

from tests.conftest import libpq_dsn
from uow.__main__ import main

IN_A_TERMINAL = (
    "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "from uow.__main__ import main; sys.exit(main(sys.argv[1:]))"
)


def test_shows_an_idle_transaction_and_the_commit_rate(
    postgres_url: str, app_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A session idle in transaction is listed, and commits made meanwhile give a rate."""
    dsn = libpq_dsn(postgres_url)
    stop = threading.Event()

    def commit() -> None:
        # A connection per transaction: a backend publishes its counts when it exits,
        # where a long-lived one would publish them only once a second.
        while not stop.is_set():
            with psycopg.connect(dsn, application_name=f"{app_name}-w") as conn:
                conn.execute("SELECT 1")
                conn.commit()

    with psycopg.connect(dsn, application_name=app_name) as held:
        held.execute("SELECT 1")  # opens a transaction, left idle
        pid = held.info.backend_pid
        committer = threading.Thread(target=commit)
        committer.start()
        try:
            code = main(["top", "--url", postgres_url, "--iterations", "3", "--interval", "0.3"])
        finally:
            stop.set()
            committer.join()
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "\x1b[" not in captured.out  # not a terminal: no screen clearing
    frames = captured.out.split("uow top: ")[1:]
    assert len(frames) == 3
    idle = frames[-1].split("Idle in transaction")[1].split("Longest open transactions")[0]
    assert re.search(rf"^\s+{pid}\s+{re.escape(app_name)}\s+[\d.]+ s\s+SELECT 1$", idle, re.M)
    assert "- commits/s" in frames[0]
    rates = [float(r) for r in re.findall(r"([\d.]+) commits/s", "".join(frames[1:]))]
    assert rates and max(rates) > 0, frames


def test_unreachable_server_exits_2_without_the_password(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An unreachable server exits 2 with one line naming the masked URL."""
    url = "postgresql://app:s3cret-pw@127.0.0.1:1/shop"
    assert main(["top", "--url", url, "--iterations", "1"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "127.0.0.1:1" in captured.err and "***" in captured.err
    assert "s3cret-pw" not in captured.err


def test_ctrl_c_exits_0(postgres_url: str, app_name: str) -> None:
    """SIGINT (Ctrl-C) stops the view cleanly with exit code 0 and no traceback."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("UOW_", "DATABASE_"))}
    environ.update(DATABASE_URL=postgres_url, UOW_APPLICATION_NAME=app_name)
    # The command as a terminal starts it: with Python's Ctrl-C handler, even when this
    # test runs in the background with SIGINT ignored (a child inherits that).
    with subprocess.Popen(  # noqa: S603 - our own interpreter and code
        [sys.executable, "-c", IN_A_TERMINAL, "top", "--interval", "0.1"],
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        assert process.stdout is not None
        assert process.stdout.readline().startswith("uow top: ")  # the first frame is out
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert "Traceback" not in err


def test_bad_interval_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """--interval must be a positive number of seconds."""
    with pytest.raises(SystemExit) as exit_info:
        main(["top", "--interval", "0"])
    assert exit_info.value.code == 2
    assert "not a positive number of seconds" in capsys.readouterr().err
