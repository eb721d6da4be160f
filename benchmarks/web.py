"""The example bank against the FastAPI-tutorial app, deployed as users deploy them.

    python -m benchmarks.web [--quick] [--rounds 3] [--duration 10]

Both apps run under the same multi-worker server, ``uvicorn --workers N``: the example
as ``python -m examples.bank serve --workers N`` (uow, which sets ``UOW_PROCESSES``),
the tutorial app (``benchmarks/tutorial_app.py``: plain SQLAlchemy with
``create_engine`` defaults and a ``get_db`` dependency) as ``uvicorn
benchmarks.tutorial_app:app --workers N``. Each connects as a role without superuser
rights to a throwaway PostgreSQL, so the reserved slots apply. Two scenarios, each on
its own server:

- normal: 4 workers, ``max_connections=100``, 64 clients;
- overload: 8 workers, ``max_connections=50``, 400 clients.

Clients are threads, each on its own keep-alive ``http.client`` connection, sending
80% transfers, 15% reads, 5% deposits between 1,000 accounts, one request at a time.
In each scenario the apps alternate (uow, tutorial, uow, tutorial, ...), a fresh
server process per round; a round boots the app, warms up, measures ``--duration``
seconds, then probes: ``2 x workers`` requests on fresh connections, each allowed
5 s; a probe left unanswered counts as a stuck worker's (a worker that accepts but
never answers, as fastapi#3205's deadlock does). Server connections of the app's role
are sampled from ``pg_stat_activity`` every 100 ms.

Prints and writes ``benchmarks/results/web.md`` and ``web.json``: per scenario and
app, the medians over rounds of requests/s, p50 and p99 (of answered requests),
responses by status, timeouts, clients never served, stuck probes and peak server
connections, and uow/tutorial ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import make_url

from uow import migrations
from uow.testing import EmbeddedPostgres

from .web_load import ACCOUNTS, REQUEST_TIMEOUT, Tally, client, stuck_probes, wait_ready

ROOT = Path(__file__).resolve().parent.parent
APPS = ("uow", "tutorial")
# The server's refusals as the apps' logs print them (tracebacks), counted per round.
SERVER_FULL = ("remaining connection slots are reserved", "too many clients already")


@dataclass(frozen=True)
class Scenario:
    """One server configuration and load."""

    name: str
    workers: int
    max_connections: int
    clients: int


SCENARIOS = (Scenario("normal", 4, 100, 64), Scenario("overload", 8, 50, 400))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def prepare(server: EmbeddedPostgres) -> str:
    """Migrate as the superuser, create the role ``web`` with DML rights, seed accounts."""
    migrations.upgrade(server.url, "head")
    password = uuid.uuid4().hex
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE web LOGIN PASSWORD {}").format(password))
        conn.execute("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO web")
        conn.execute("GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO web")
        conn.execute(
            "INSERT INTO accounts (owner, balance) "
            f"SELECT 'client ' || n, 1000000000 FROM generate_series(1, {ACCOUNTS}) AS n"
        )
        conn.execute(
            "INSERT INTO ledger (idempotency_key, target_id, amount) "
            "SELECT 'open:' || id, id, balance FROM accounts"
        )
    url = make_url(server.url).set(username="web", password=password)
    return url.render_as_string(hide_password=False)


def command(app: str, workers: int, port: int) -> list[str]:
    """The server's command line: the same uvicorn options for both apps."""
    if app == "uow":
        start = [sys.executable, "-m", "examples.bank", "serve"]
    else:
        start = [sys.executable, "-m", "uvicorn", "benchmarks.tutorial_app:app"]
    options = ["--port", str(port), "--no-access-log", "--log-level", "warning"]
    return [*start, "--workers", str(workers), *options]


def wait_disconnected(dsn: str, limit: float = 60.0) -> None:
    """Wait until the role ``web`` has no backend left."""
    deadline = time.monotonic() + limit
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = 'web'")
            if int(row.fetchone()[0]) == 0:  # type: ignore[index]
                return
            time.sleep(0.2)
    raise RuntimeError(f"the app's connections were still open {limit:g} s after it stopped")


def sample_connections(dsn: str, stop: threading.Event, peaks: list[int]) -> None:
    """Count the role's backends every 100 ms; keep the peak in ``peaks[0]``."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        while not stop.wait(0.1):
            row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = 'web'")
            count = int(row.fetchone()[0])  # type: ignore[index]
            peaks[0] = max(peaks[0], count)


def run_round(
    server: EmbeddedPostgres, url: str, app: str, scenario: Scenario, args: argparse.Namespace
) -> dict[str, Any]:
    """Boot one app, load it, measure, probe, stop it."""
    port = free_port()
    env = {
        k: v for k, v in os.environ.items() if k != "WEB_CONCURRENCY" and not k.startswith("UOW_")
    }
    env["DATABASE_URL"] = url
    # The server's output, counted, not printed; closed in the finally clause below.
    log = tempfile.TemporaryFile()  # noqa: SIM115
    process = subprocess.Popen(  # noqa: S603 - this interpreter, this repository's apps
        command(app, scenario.workers, port),
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=log,
        start_new_session=True,  # a group of its own: a stuck worker is killed with it
    )
    tally: list[Tally | None] = [None]
    stop, sampling = threading.Event(), threading.Event()
    peaks = [0]
    try:
        wait_ready(port, process, log)
        sampler = threading.Thread(target=sample_connections, args=(server.dsn, sampling, peaks))
        sampler.start()
        clients = [
            threading.Thread(target=client, args=(n, port, tally, stop, args.seed), daemon=True)
            for n in range(scenario.clients)
        ]
        for thread in clients:
            thread.start()
        time.sleep(args.warmup)
        window = tally[0] = Tally()
        opened = time.monotonic()
        time.sleep(args.duration)
        tally[0] = None
        elapsed = time.monotonic() - opened
        stop.set()
        for thread in clients:
            thread.join(REQUEST_TIMEOUT + 5)
        stuck = stuck_probes(port, 2 * scenario.workers)
        sampling.set()
        sampler.join()
    finally:
        stop.set()
        sampling.set()
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # workers the master left behind
        # The next round's boot check counts connected backends: let these go first.
        wait_disconnected(server.dsn)
        log.seek(0)
        output = log.read().decode(errors="replace")
        log.close()
    latencies = sorted(window.latencies)
    ok = sum(n for status, n in window.statuses.items() if status.startswith("2"))
    return {
        "requests_per_s": round(ok / elapsed, 1),
        "p50_ms": round(1000 * latencies[len(latencies) // 2], 1) if latencies else None,
        "p99_ms": round(1000 * latencies[int(len(latencies) * 0.99)], 1) if latencies else None,
        "statuses": dict(sorted(window.statuses.items())),
        "errors_5xx": sum(n for status, n in window.statuses.items() if status.startswith("5")),
        "failed": sum(n for status, n in window.statuses.items() if status[0] not in "234"),
        "clients_never_served": scenario.clients - len(window.served),
        "stuck_probes": stuck,
        "peak_server_connections": peaks[0],
        "server_full_errors_logged": sum(output.count(text) for text in SERVER_FULL),
    }


SUMMED = (
    "errors_5xx",
    "failed",
    "clients_never_served",
    "stuck_probes",
    "server_full_errors_logged",
)
MEDIAN = ("requests_per_s", "p50_ms", "p99_ms")


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of the rates and latencies, totals of the failures, max of the peaks."""
    statuses: dict[str, int] = {}
    for r in rounds:
        for status, n in r["statuses"].items():
            statuses[status] = statuses.get(status, 0) + n
    return {
        **{key: statistics.median(r[key] for r in rounds if r[key] is not None) for key in MEDIAN},
        **{key: sum(r[key] for r in rounds) for key in SUMMED},
        "max_stuck_probes": max(r["stuck_probes"] for r in rounds),
        "peak_server_connections": max(r["peak_server_connections"] for r in rounds),
        "statuses": dict(sorted(statuses.items())),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 round of 3 s per app, smoke check")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per app and scenario (3)")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds (10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before (2)")
    parser.add_argument("--scenarios", default="normal,overload", help="(normal,overload)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, 3.0, 1.0
    chosen = [s for s in SCENARIOS if s.name in args.scenarios.split(",")]
    report: dict[str, Any] = {"config": {k: str(v) for k, v in vars(args).items()}}
    for scenario in chosen:
        rounds: dict[str, list[dict[str, Any]]] = {app: [] for app in APPS}
        with EmbeddedPostgres(max_connections=scenario.max_connections) as server:
            url = prepare(server)
            for number in range(args.rounds):
                for app in APPS:
                    result = run_round(server, url, app, scenario, args)
                    rounds[app].append(result)
                    print(
                        f"{scenario.name} round {number + 1} {app}: {json.dumps(result)}",
                        flush=True,
                    )
        summary = {app: summarise(rounds[app]) for app in APPS}
        report[scenario.name] = {"scenario": vars(scenario), "rounds": rounds, "summary": summary}
    write_report(args, report, chosen)
    return 0


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def table_row(label: str, a: float, b: float, unit: str, *, ratios: bool) -> str:
    """One line of a scenario's table: uow, tutorial and, if asked, their ratio."""
    shown = ratio(a, b) if ratios else ""
    return f"| {label} | {a:.0f}{unit} | {b:.0f}{unit} | {shown} |"


def write_report(args: argparse.Namespace, report: dict[str, Any], chosen: list[Scenario]) -> None:
    """Print the tables and write web.md and web.json into ``args.out``."""
    lines = [
        "# The example bank (uow) against the FastAPI-tutorial app",
        "",
        f"`uvicorn --workers N`, {args.rounds} alternated rounds per app of {args.duration:g} s "
        f"(after {args.warmup:g} s warm-up); 80% transfers, 15% reads, 5% deposits between "
        f"{ACCOUNTS:,} accounts; medians over rounds for rates and latencies, totals for "
        "failures, the highest peak of server connections (sampled every 100 ms).",
    ]
    for scenario in chosen:
        s = report[scenario.name]["summary"]
        u, t = s["uow"], s["tutorial"]

        def row(label: str, key: str, unit: str = "", *, ratios: bool = True) -> str:
            return table_row(label, u[key], t[key], unit, ratios=ratios)  # noqa: B023 - called at once

        lines += [
            "",
            f"## {scenario.name}: {scenario.workers} workers, max_connections "
            f"{scenario.max_connections}, {scenario.clients} clients",
            "",
            "| | uow | tutorial | uow / tutorial |",
            "|---|---|---|---|",
            row("requests/s (2xx)", "requests_per_s"),
            row("p50", "p50_ms", " ms"),
            row("p99", "p99_ms", " ms"),
            row("failed requests (5xx, timeouts, resets)", "failed", ratios=False),
            row("of which 5xx", "errors_5xx", ratios=False),
            row("clients never served (sum over rounds)", "clients_never_served", ratios=False),
            row(
                f"workers not answering: probes unanswered, most in a round (of "
                f"{2 * scenario.workers})",
                "max_stuck_probes",
                ratios=False,
            ),
            row("peak server connections", "peak_server_connections"),
            row(
                "`remaining connection slots` / `too many clients` in the logs",
                "server_full_errors_logged",
                ratios=False,
            ),
            "",
            f"Responses by status, all rounds: uow `{json.dumps(u['statuses'])}`, "
            f"tutorial `{json.dumps(t['statuses'])}`.",
        ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "web.md").write_text("\n".join(lines) + "\n")
    (args.out / "web.json").write_text(json.dumps(report, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
