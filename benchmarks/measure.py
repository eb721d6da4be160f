"""Measuring one point: client threads, the timing window, percentiles, server connections.

A point runs ``clients`` threads, each calling one transaction function in a loop for
``warmup + duration`` seconds. Only transactions that *complete* inside the window
``[start + warmup, start + warmup + duration]`` count, as with pgbench's per-transaction
log, so both are measured the same way. Latency is taken around the whole call,
waiting for a pooled connection included.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar

import psycopg
from sqlalchemy.exc import DBAPIError

__all__ = [
    "ConnectionPoller",
    "CpuMeter",
    "CpuSample",
    "Measurement",
    "error_kind",
    "percentile",
    "run_clients",
    "summarize",
]

S = TypeVar("S")

# A client that failed waits this long before trying again, so an error storm does
# not turn into a hot loop that starves the other clients of the GIL.
_ERROR_PAUSE = 0.001


@dataclass
class Measurement:
    """What one point measured: throughput, latency, errors and connections."""

    transactions: int
    """Transactions completed inside the window."""
    seconds: float
    """Length of the window."""
    tps: float
    mean_ms: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    per_client_min: int
    """Fewest transactions any one client completed inside the window."""
    per_client_max: int
    errors: dict[str, int] = field(default_factory=dict)
    """Failed transactions by kind, over the whole run (warm-up included)."""
    peak_connections: int = 0
    """Most server connections seen at once with the point's application_name."""
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0-100) of an already sorted sequence; 0.0 if empty."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summarize(
    latencies: Sequence[float],
    seconds: float,
    per_client: Sequence[int],
    errors: Counter[str],
) -> Measurement:
    """Build a Measurement from latencies in seconds of the transactions in the window."""
    ordered = sorted(latencies)
    n = len(ordered)
    return Measurement(
        transactions=n,
        seconds=seconds,
        tps=n / seconds if seconds > 0 else 0.0,
        mean_ms=sum(ordered) / n * 1000 if n else 0.0,
        p50_ms=percentile(ordered, 50) * 1000,
        p99_ms=percentile(ordered, 99) * 1000,
        max_ms=ordered[-1] * 1000 if n else 0.0,
        per_client_min=min(per_client, default=0),
        per_client_max=max(per_client, default=0),
        errors=dict(errors.most_common()),
    )


def error_kind(exc: BaseException) -> str:
    """Name an error for the report: its class and, from PostgreSQL, its SQLSTATE."""
    orig: BaseException = exc
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        orig = exc.orig
    name = type(exc).__name__ if orig is exc else f"{type(exc).__name__}/{type(orig).__name__}"
    sqlstate = getattr(orig, "sqlstate", None)
    return f"{name} (SQLSTATE {sqlstate})" if sqlstate else name


@dataclass
class _ClientLog:
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)


def run_clients(
    transaction: Callable[[S], None],
    make_state: Callable[[int], S],
    clients: int,
    warmup: float,
    duration: float,
) -> Measurement:
    """Run ``clients`` threads calling ``transaction(state)`` in a loop; measure the window.

    Each thread builds its own state with ``make_state(index)`` before the common start,
    so thread start-up is not measured. Exceptions are counted by kind, never raised.
    """
    logs = [_ClientLog() for _ in range(clients)]
    window = [0.0, 0.0]

    def start_window() -> None:  # run by one thread as the barrier opens
        now = time.perf_counter()
        window[0], window[1] = now + warmup, now + warmup + duration

    barrier = threading.Barrier(clients + 1, action=start_window)

    def client(index: int) -> None:
        state = make_state(index)
        log = logs[index]
        record, count_error = log.latencies.append, log.errors.update
        clock = time.perf_counter
        barrier.wait()
        opens, closes = window
        while True:
            began = clock()
            if began >= closes:
                break
            try:
                transaction(state)
            except Exception as exc:  # noqa: BLE001 - every failure is counted by kind
                count_error((error_kind(exc),))
                time.sleep(_ERROR_PAUSE)
                continue
            ended = clock()
            if opens <= ended <= closes:
                record(ended - began)

    threads = [
        threading.Thread(target=client, args=(i,), name=f"bench-client-{i}", daemon=True)
        for i in range(clients)
    ]
    for thread in threads:
        thread.start()
    barrier.wait(timeout=120)
    for thread in threads:
        thread.join()
    errors: Counter[str] = Counter()
    for log in logs:
        errors.update(log.errors)
    latencies = [x for log in logs for x in log.latencies]
    return summarize(latencies, duration, [len(log.latencies) for log in logs], errors)


class ConnectionPoller:
    """Counts a point's server connections from a side connection, every ``interval`` s.

    Counts the rows of ``pg_stat_activity`` whose ``application_name`` is the point's
    own, so connections of other variants (still closing) and of the harness itself
    are not counted. Use it as a context manager around the point; read ``peak`` after.
    """

    def __init__(self, conninfo: str, application_name: str, interval: float = 0.02) -> None:
        self._conninfo = conninfo
        self._name = application_name
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="bench-poller", daemon=True)
        self._conn: psycopg.Connection[tuple[int]] | None = None
        self.peak = 0
        self.samples = 0

    def __enter__(self) -> Self:
        self._conn = psycopg.Connection.connect(
            self._conninfo, autocommit=True, application_name="bench-poller"
        )
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()
        if self._conn is not None:
            self._conn.close()

    def _poll(self) -> None:
        assert self._conn is not None
        query = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
        while True:
            row = self._conn.execute(query, (self._name,)).fetchone()
            self.peak = max(self.peak, int(row[0]) if row else 0)
            self.samples += 1
            if self._stop.wait(self._interval):
                return


@dataclass(frozen=True)
class CpuSample:
    """Cumulative CPU clock ticks: the whole machine's, and the benchmark's own part."""

    busy: int
    """Ticks all CPUs spent in user, nice and system mode."""
    total: int
    """Ticks all CPUs spent in any state (idle included)."""
    ours: int
    """Ticks of this process, its reaped children (pgbench) and the embedded server."""


class CpuMeter:
    """Tells how much CPU *other* processes took while a point ran (Linux, else None).

    The machine's busy time comes from ``/proc/stat``; the benchmark's own is this
    process with its reaped children (``os.times``) plus the server: the postmaster,
    what it reaped (its ``cutime``/``cstime``) and its live children. The difference is
    work the benchmark did not do, which competes with it for the CPUs.
    """

    def __init__(self, postmaster_pid_file: Path | None) -> None:
        self._pid_file = postmaster_pid_file
        self._hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def sample(self) -> CpuSample | None:
        try:
            fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
            times = os.times()
            own = times.user + times.system + times.children_user + times.children_system
            return CpuSample(
                busy=sum(fields[0:3]),
                total=sum(fields),
                ours=round(own * self._hz) + self._server_ticks(),
            )
        except (OSError, ValueError, IndexError):
            return None

    def other(self, before: CpuSample | None, after: CpuSample | None) -> float | None:
        """Fraction of all CPUs that other processes used between two samples."""
        if before is None or after is None or after.total <= before.total:
            return None
        foreign = (after.busy - before.busy) - (after.ours - before.ours)
        return max(0.0, foreign / (after.total - before.total))

    def measure_idle(self, seconds: float) -> float | None:
        """Other processes' share of the CPUs over ``seconds`` of our own idleness."""
        before = self.sample()
        time.sleep(seconds)
        return self.other(before, self.sample())

    def _server_ticks(self) -> int:
        if self._pid_file is None:
            return 0
        try:
            postmaster = int(self._pid_file.read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return 0
        ticks = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                # Fields after the command name: state, ppid, ..., utime (11), stime,
                # cutime, cstime (14); see proc(5).
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue  # exited while we looked
            pid = int(stat.parent.name)
            if pid == postmaster:
                ticks += sum(int(x) for x in fields[11:15])
            elif int(fields[1]) == postmaster:
                ticks += int(fields[11]) + int(fields[12])
        return ticks
