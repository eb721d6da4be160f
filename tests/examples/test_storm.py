"""A short storm: uow keeps its guarantees where a connection per request fails."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.helpers import run_python


def storm(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run a short storm (2 processes x 15 threads, max_connections=20) on its own server."""
    return run_python(
        "-m", "examples.bank.storm",
        "--duration", "2", "--processes", "2", "--threads", "15",
        "--max-connections", "20", "--accounts", "40", "--out", str(tmp_path), *args,
        drop=("DATABASE_URL",), timeout=300,
    )  # fmt: skip


def test_short_storm_uow_has_no_connection_errors_and_stays_in_budget(tmp_path: Path) -> None:
    """30 clients, max_connections=20: naive fails to connect; uow: no errors, in budget."""
    done = storm(tmp_path, "--work-ms", "50")
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    modes = {mode["mode"]: mode for mode in summary["modes"]}
    assert set(modes) == {"naive", "uow", "uow-short-tx", "uow-async"}
    budget = summary["processes"] * summary["pool_size"]
    for name in ("uow", "uow-short-tx", "uow-async"):
        mode = modes[name]
        assert mode["connection_errors"] == 0, mode["errors"]
        assert mode["errors"] == {}
        assert 0 < mode["peak_connections"] <= budget == mode["budget"]
        assert mode["committed"] > 0
        assert mode["invariant_holds"], mode["invariant_detail"]
    assert modes["naive"]["connection_errors"] > 0  # the contrast the demo exists to show
    assert modes["naive"]["invariant_holds"]  # failed requests still leave no half-transfer
    assert (tmp_path / "storm.png").stat().st_size > 10_000
    assert "ok uow: the server refused no connection;" in done.stdout
    assert "doctor-uow-async.txt" in done.stdout.splitlines()[-1]  # the closing line
    # uow doctor looked at the server halfway through each mode, as the app connects.
    report = (tmp_path / "doctor-uow.txt").read_text()
    assert "storm-uow" in report
    assert "Connection budget" in report


def test_short_storm_through_pgbouncer(tmp_path: Path) -> None:
    """uow-pgbouncer: 30 client connections through PgBouncer, no errors, server within budget."""
    done = storm(tmp_path, "--work-ms", "20", "--modes", "uow-pgbouncer")
    assert done.returncode == 0, done.stdout + done.stderr
    (mode,) = json.loads((tmp_path / "summary.json").read_text())["modes"]
    assert mode["errors"] == {}
    assert mode["committed"] > 0
    assert 0 < mode["peak_connections"] <= mode["budget"]
    assert mode["invariant_holds"], mode["invariant_detail"]
    report = (tmp_path / "doctor-uow-pgbouncer.txt").read_text()
    assert "transaction" in report and "PgBouncer 1." in report
    assert "No warnings." in report


def test_short_storm_statements_inline_versus_worker(tmp_path: Path) -> None:
    """Statements rendered inline hold the request; in workers, the request defers and returns."""
    done = storm(
        tmp_path,
        "--work-ms", "20", "--pool-size", "4", "--modes", "statements-inline,statements-worker",
        "--statement-share", "0.2", "--render-ms", "50", "--job-workers", "1",
        "--job-concurrency", "2",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    inline, worker = summary["modes"]
    assert (inline["mode"], worker["mode"]) == ("statements-inline", "statements-worker")
    for mode in (inline, worker):
        assert mode["errors"] == {}
        assert mode["committed"] > 0
        assert mode["statements"] > 0
        assert mode["invariant_holds"], mode["invariant_detail"]
        assert 0 < mode["peak_connections"] <= mode["budget"]
    # Inline, every statement request waited for its rendering (50 ms at least).
    assert inline["statement_p50_ms"] >= 50
    assert inline["statements_rendered"] == inline["statements"]
    assert inline["job_workers"] == 0 and inline["budget"] == 8
    # In workers, every request was rendered by the job worker, whose connections count.
    assert worker["job_workers"] == 1 and worker["budget"] > 8
    assert worker["statements_rendered"] >= 1
    assert (worker["statements_pending"], worker["statements_failed"]) == (0, 0)
    assert worker["drain_s"] is not None
    assert worker["peak_job_connections"] > 0
    assert "stmt p99" in done.stdout  # the side-by-side table
    assert (tmp_path / "storm.png").stat().st_size > 10_000
