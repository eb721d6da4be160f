"""A server outage under load: callers fail fast, the server is not stormed, recovery is quick."""

from __future__ import annotations

import threading
import time
from collections import Counter

from sqlalchemy import text

from uow import Database, DatabaseUnavailable, Settings, UnitOfWork
from uow.testing import EmbeddedPostgres


def time_to_full_throughput(
    outcomes: list[tuple[float, float, str]], down_at: float, up_at: float
) -> float:
    """Seconds from ``up_at`` to the end of the first 100 ms with half the commits of before."""
    ends = [started + took for started, took, outcome in outcomes if outcome == "ok"]
    before = sum(down_at - 0.5 <= end < down_at for end in ends) / 5  # per 100 ms
    for bucket in range(30):
        start = up_at + bucket * 0.1
        if sum(start <= end < start + 0.1 for end in ends) >= before / 2:
            return (bucket + 1) * 0.1
    return float("inf")


def test_outage_fails_fast_without_a_connection_storm_and_recovers() -> None:
    """32 threads through a 3 s outage: few connect attempts, fast failures, back at once."""
    with EmbeddedPostgres() as server:
        database = Database(Settings(url=server.url, pool_size=8, pool_timeout=2))
        outcomes: list[tuple[float, float, str]] = []  # (started, seconds, outcome)
        lock = threading.Lock()
        stop = threading.Event()

        def client() -> None:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    with UnitOfWork(database) as unit:
                        unit.session.execute(text("SELECT pg_sleep(0.005)"))
                    outcome = "ok"
                except Exception as exc:
                    outcome = type(exc).__name__
                    time.sleep(0.01)
                with lock:
                    outcomes.append((started, time.monotonic() - started, outcome))

        threads = [threading.Thread(target=client) for _ in range(32)]
        for thread in threads:
            thread.start()
        try:
            time.sleep(1.0)
            before = database.counters()
            server.stop()
            down_at = time.monotonic()
            time.sleep(3.0)
            attempts_while_down = (
                database.counters()["connect_failures"] - before["connect_failures"]
            )
            server.start()
            up_at = time.monotonic()
            time.sleep(3.0)
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        try:
            failures = [o for o in outcomes if o[2] != "ok" and down_at + 0.5 < o[0] < up_at]
            kinds = Counter(kind for _, _, kind in failures)
            first_ok_after = min(s + d for s, d, kind in outcomes if kind == "ok" and s >= up_at)
            recovery = first_ok_after - up_at
            slowest = sorted(d for _, d, _ in failures)[int(len(failures) * 0.95)]
            full = time_to_full_throughput(outcomes, down_at, up_at)
            counters = database.counters()
            print(
                f"outage 3s, 32 threads: {attempts_while_down} connect attempts while down, "
                f"{counters['fast_failures']} fast failures, failures by kind {dict(kinds)}, "
                f"p95 failure time {slowest * 1000:.0f} ms, recovered {recovery:.2f}s after restart"
                f", full throughput after {full:.2f}s"
            )
            # The backoff's 0.25 s cap probes about 4 times a second: a storm is thousands.
            assert attempts_while_down <= 40
            assert set(kinds) <= {DatabaseUnavailable.__name__}
            assert len(failures) > 100 and counters["fast_failures"] > 100
            assert slowest < 0.25  # callers are told at once, not after a timeout
            assert recovery < 1.0
            # Full throughput within 0.5 s of the server plus slack for a loaded machine;
            # the 1 s backoff cap this replaced often took longer.
            assert full <= 0.75
            assert database.status().checked_out == 0
        finally:
            database.dispose()
