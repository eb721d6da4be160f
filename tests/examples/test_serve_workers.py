"""`serve --workers N`: N uvicorn worker processes counted in the budget, logs for servers."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.helpers import ROOT
from uow import Database

LINE = re.compile(
    r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) \[(\d+)\] [\w.]+: "
)


def workers_of(parent: int) -> list[int]:
    """The pids of ``parent``'s multiprocessing children (uvicorn's workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if ppid == parent and b"spawn_main" in cmdline:
            found.append(int(entry.name))
    return sorted(found)


def environment_of(pid: int) -> dict[str, str]:
    pairs = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(p.decode().split("=", 1) for p in pairs if b"=" in p)


def get(url: str) -> tuple[int, object]:
    with urllib.request.urlopen(url, timeout=10) as reply:  # noqa: S310 - 127.0.0.1
        return reply.status, json.loads(reply.read())


def test_serve_with_two_workers(bank_db: Database, bank_url: str, tmp_path: Path) -> None:
    """Two worker processes with UOW_PROCESSES=2 answer; every log line has time, level, pid."""
    with socket.socket() as probe:  # a free port, released for the server to take
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UOW_", "DATABASE_URL"))}
    log = tmp_path / "server.log"
    with log.open("w") as stderr:
        server = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "examples.bank", "serve", "--workers", "2", "--port", str(port)],
            cwd=ROOT,
            env={**env, "DATABASE_URL": bank_url},
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        deadline = time.monotonic() + 90  # two interpreters start on a busy machine
        while log.read_text().count("Application startup complete.") < 2:
            assert server.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        workers = workers_of(server.pid)
        counts = [environment_of(pid).get("UOW_PROCESSES") for pid in workers]
        with ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(get, [f"http://127.0.0.1:{port}/health"] * 40))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)

    assert len(workers) == 2, workers
    assert counts == ["2", "2"]  # so each worker's budget check counts both
    assert {status for status, _ in replies} == {200}
    lines = log.read_text().splitlines()
    assert all(LINE.match(line) for line in lines), [x for x in lines if not LINE.match(x)]
    started = {int(m[2]) for x in lines if "Started server process" in x and (m := LINE.match(x))}
    assert started == set(workers)
    assert any(" INFO " in x and " uvicorn.access: " in x and "/health" in x for x in lines)
    assert "Stopping parent process" in lines[-1]
