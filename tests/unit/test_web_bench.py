"""benchmarks/web.py: the command line and how rounds add up (the benchmark itself runs by hand)."""

from __future__ import annotations

from typing import Any

from benchmarks.web import command, summarise
from tests.helpers import run_python


def _round(rate: float, p99: float, failed: int, peak: int) -> dict[str, Any]:
    return {
        "requests_per_s": rate,
        "p50_ms": 1.0,
        "p99_ms": p99,
        "statuses": {"201": 10, "500": failed},
        "errors_5xx": failed,
        "failed": failed,
        "clients_never_served": failed,
        "stuck_probes": 0,
        "server_full_errors_logged": failed,
        "peak_server_connections": peak,
    }


def test_help_runs_without_a_server() -> None:
    """`python -m benchmarks.web --help` prints the options and exits 0."""
    done = run_python("-m", "benchmarks.web", "--help", timeout=60)
    assert done.returncode == 0, done.stderr
    assert "--quick" in done.stdout
    assert "--rounds" in done.stdout


def test_summary_takes_medians_of_rates_totals_of_failures_and_the_highest_peak() -> None:
    """Rates and latencies are medians over rounds; failures add up; the peak is the max."""
    summary = summarise([_round(100, 50, 0, 20), _round(300, 10, 7, 12), _round(200, 30, 1, 15)])
    assert (summary["requests_per_s"], summary["p99_ms"]) == (200, 30)
    assert (summary["failed"], summary["server_full_errors_logged"]) == (8, 8)
    assert summary["peak_server_connections"] == 20
    assert summary["statuses"] == {"201": 30, "500": 8}


def test_both_apps_run_under_the_same_server_options() -> None:
    """Only the app differs between the two command lines: workers and options are equal."""
    uow_app, tutorial = command("uow", 8, 8123), command("tutorial", 8, 8123)
    assert uow_app[uow_app.index("--workers") :] == tutorial[tutorial.index("--workers") :]
    assert "examples.bank" in uow_app
    assert "benchmarks.tutorial_app:app" in tutorial
