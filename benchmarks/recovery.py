"""Recovery after a restart: uow against plain SQLAlchemy with pre-ping, in the same run.

    python -m benchmarks.recovery [--rounds 5] [--threads 8] [--down 1.0]

Both clients run at once against one throwaway PostgreSQL, each from its own threads
looping a short transaction (``SELECT 1`` in a unit of work; in a plain ``Session`` on
``create_engine(pool_pre_ping=True)``), so every restart hits both alike. Each round
stops the server (``pg_ctl stop -m fast``), keeps it down for ``--down`` seconds and
starts it; a side probe connects every 10 ms to record when the server accepts
connections again. Commits are counted per 100 ms; a client is back at full throughput
at the end of the first 100 ms after that moment in which it committed at least 80% of
its median before the stop. A failed transaction sleeps 10 ms, as a web client would
before its next request, in both clients.

Prints, per round and as medians, each client's seconds from "server accepts" to
"full throughput" and uow's difference; writes ``benchmarks/results/recovery.md`` and
``recovery.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

import uow
from uow.testing import EmbeddedPostgres

BUCKET = 0.1  # seconds
FULL = 0.8  # share of the pre-stop median that counts as full throughput
CLIENTS = ("uow", "plain-pre-ping")


class Recorder:
    """Commit times per client, appended from many threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.commits: dict[str, list[float]] = {name: [] for name in CLIENTS}
        self.errors: dict[str, dict[str, int]] = {name: {} for name in CLIENTS}

    def ok(self, client: str) -> None:
        with self.lock:
            self.commits[client].append(time.monotonic())

    def failed(self, client: str, exc: Exception) -> None:
        with self.lock:
            kinds = self.errors[client]
            kinds[type(exc).__name__] = kinds.get(type(exc).__name__, 0) + 1


def wait_until_ready(dsn: str, stop: threading.Event) -> float:
    """Connect every 10 ms until the server accepts; return when it first did."""
    while not stop.wait(0.01):
        try:
            psycopg.connect(dsn, connect_timeout=2).close()
        except psycopg.OperationalError:
            continue
        return time.monotonic()
    raise RuntimeError("the server never came back")


def per_bucket(times: list[float], start: float, end: float) -> list[int]:
    counts = [0] * int((end - start) / BUCKET)
    for moment in times:
        index = int((moment - start) / BUCKET)
        if 0 <= index < len(counts):
            counts[index] += 1
    return counts


def time_to_full(times: list[float], stopped: float, ready: float, end: float) -> float:
    """Seconds from ``ready`` to the end of the first 100 ms at full throughput."""
    baseline = statistics.median(per_bucket(times, stopped - 1.5, stopped))
    for index, count in enumerate(per_bucket(times, ready, end)):
        if count >= FULL * baseline:
            return (index + 1) * BUCKET
    return float("inf")


def run_round(server: EmbeddedPostgres, recorder: Recorder, down: float) -> dict[str, Any]:
    time.sleep(2.0)  # warm, and the baseline's window
    stopped = time.monotonic()
    server.stop()
    time.sleep(down)
    server.start()
    ready = wait_until_ready(server.dsn, threading.Event())
    time.sleep(3.0)
    end = time.monotonic()
    with recorder.lock:
        commits = {name: list(times) for name, times in recorder.commits.items()}
    seconds = {name: time_to_full(commits[name], stopped, ready, end) for name in CLIENTS}
    return {
        "seconds_to_full": seconds,
        "start_to_ready": round(ready - stopped - down, 3),
        "commits_per_100ms_after_ready": {
            name: per_bucket(commits[name], ready, ready + 1.0) for name in CLIENTS
        },
        "commits_per_s_before": {
            name: statistics.median(per_bucket(commits[name], stopped - 1.5, stopped)) / BUCKET
            for name in CLIENTS
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=8, help="per client")
    parser.add_argument("--down", type=float, default=1.0, help="seconds the server is down")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()

    with EmbeddedPostgres(max_connections=100) as server:
        database = uow.Database(uow.Settings(url=server.url, pool_size=args.threads))
        plain = create_engine(server.url, pool_size=args.threads, pool_pre_ping=True)
        recorder = Recorder()
        stop = threading.Event()

        def uow_once() -> None:
            with uow.UnitOfWork(database) as unit:
                unit.session.execute(text("SELECT 1"))

        def plain_once() -> None:
            with Session(plain) as session, session.begin():
                session.execute(text("SELECT 1"))

        def loop(client: str, once: Callable[[], None]) -> None:
            while not stop.is_set():
                try:
                    once()
                except Exception as exc:  # noqa: BLE001 - counted by kind, then retried
                    recorder.failed(client, exc)
                    time.sleep(0.01)
                else:
                    recorder.ok(client)

        threads = [
            threading.Thread(target=loop, args=(client, once), daemon=True)
            for client, once in (("uow", uow_once), ("plain-pre-ping", plain_once))
            for _ in range(args.threads)
        ]
        for thread in threads:
            thread.start()
        rounds = []
        try:
            for number in range(args.rounds):
                result = run_round(server, recorder, args.down)
                rounds.append(result)
                seconds = result["seconds_to_full"]
                print(
                    f"round {number + 1}: full throughput after the server accepts: "
                    + ", ".join(f"{name} {seconds[name]:.1f}s" for name in CLIENTS),
                    flush=True,
                )
        finally:
            stop.set()
            for thread in threads:
                thread.join(10)
            database.dispose()
            plain.dispose()

    write_report(args, rounds, recorder.errors)


def write_report(
    args: argparse.Namespace, rounds: list[dict[str, Any]], errors: dict[str, dict[str, int]]
) -> None:
    """Print the table and write recovery.md and recovery.json into ``args.out``."""
    medians = {
        name: statistics.median(r["seconds_to_full"][name] for r in rounds) for name in CLIENTS
    }
    difference = medians["uow"] - medians["plain-pre-ping"]
    report = {
        "rounds": rounds,
        "median_seconds_to_full": medians,
        "uow_minus_plain": round(difference, 3),
        "errors": errors,
        "threads_per_client": args.threads,
        "down": args.down,
    }
    lines = [
        "# Recovery after a restart",
        "",
        f"{args.rounds} restarts ({args.down:g} s down), {args.threads} threads per client, "
        "both clients at once; seconds from the server accepting connections to the end of "
        f"the first 100 ms at >= {FULL:.0%} of the client's pre-stop commits.",
        "",
        "| round | uow | plain pre-ping | uow - plain |",
        "|---|---|---|---|",
    ]
    for number, r in enumerate(rounds, 1):
        s = r["seconds_to_full"]
        lines.append(
            f"| {number} | {s['uow']:.1f} s | {s['plain-pre-ping']:.1f} s | "
            f"{s['uow'] - s['plain-pre-ping']:+.1f} s |"
        )
    lines += [
        f"| median | {medians['uow']:.1f} s | {medians['plain-pre-ping']:.1f} s | "
        f"{difference:+.1f} s |",
        "",
        f"Errors by kind: {json.dumps(errors)}",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "recovery.md").write_text("\n".join(lines) + "\n")
    (args.out / "recovery.json").write_text(json.dumps(report, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
