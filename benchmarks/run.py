"""Run the benchmarks: ``python -m benchmarks.run [--quick] [options]`` from the project root.

Starts a throwaway PostgreSQL (max_connections=400, fsync off) unless ``--url`` or
DATABASE_URL names a server, creates ``bench_accounts`` and ``bench_rows`` there,
and measures every variant on every workload and client count, the variants
interleaved (their order rotated each repeat) so drift touches all of them alike.
Writes results.md, results.json and results.png into ``--out`` and prints the
Markdown. Exits 1 if any transaction failed.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import importlib.metadata
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import psycopg

from uow import Settings

from .measure import ConnectionPoller, CpuMeter, Measurement, run_clients, summarize
from .models import create_schema, truncate_rows
from .pgbench import find_pgbench, pgbench_version, run_pgbench
from .report import BulkPoint, Point, Report
from .variants import (
    BULK_VARIANTS,
    TRANSACTION_VARIANTS,
    BulkRows,
    Config,
    WorkerState,
    bulk_rows,
)

ROOT = Path(__file__).resolve().parent.parent
WORKLOADS = ("W1", "W2", "W3")
MAX_CONNECTIONS = 400
# On top of EmbeddedPostgres's own (fsync, synchronous_commit, full_page_writes off;
# jit off): room for 300 pgbench connections, the whole data set in shared buffers,
# and no checkpoint in the middle of a point.
SERVER_SETTINGS: dict[str, str | int | float | bool] = {
    "shared_buffers": "256MB",
    "max_wal_size": "8GB",
    "checkpoint_timeout": "1h",
}
REPORTED_SETTINGS = (
    "server_version",
    "max_connections",
    "fsync",
    "synchronous_commit",
    "full_page_writes",
    "shared_buffers",
    "max_wal_size",
    "autovacuum",
    "jit",
)
# Other processes' share of the CPUs above which a point counts as disturbed.
QUIET = 0.1
T = TypeVar("T")


@dataclass(frozen=True)
class Job:
    """One variant on one workload at one client count (run once per repeat)."""

    workload: str
    clients: int
    variant: str
    """The label in the report: the base name, with ``-noping`` when pre-ping is off."""
    base: str
    pre_ping: bool | None


@dataclass(frozen=True)
class Server:
    url: str
    conninfo: str
    description: str
    embedded: bool
    bin_dir: Path | None
    pid_file: Path | None
    """The embedded server's postmaster.pid, to tell its CPU time from other processes'."""


# -- command line -------------------------------------------------------------------------


def _csv(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    all_variants = ["pgbench", *TRANSACTION_VARIANTS, *BULK_VARIANTS]
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=(__doc__ or "").split("\n\n")[0]
    )
    add = parser.add_argument
    add("--quick", action="store_true", help="smoke check: 1 s points, clients 1,8, 1 repeat")
    add("--duration", type=float, help="measured seconds per point (5; quick 1)")
    add("--warmup", type=float, help="unmeasured seconds before each point (0.5; quick 0.25)")
    add("--repeats", type=int, help="times each point is measured (3; quick 1)")
    add("--clients", type=_csv, help="client counts, comma-separated (1,8,32,300; quick 1,8)")
    add("--workloads", type=_csv, default=list(WORKLOADS), help="of W1,W2,W3 (all)")
    add("--variants", type=_csv, default=all_variants, help=f"of {','.join(all_variants)} (all)")
    add("--pool-size", type=int, default=20, help="connections per pooled variant (20)")
    add(
        "--pre-ping",
        choices=("on", "off", "both"),
        default="on",
        help="pre-ping in pooled variants; 'on' adds uow-, core- and orm-noping to W1 @ 8"
        " clients, 'both' adds a -noping twin of every pooled variant everywhere (on)",
    )
    add("--accounts", type=int, default=10_000, help="rows in bench_accounts (10000)")
    add("--bulk-rows", type=int, help="rows per W3 load (100000; quick 20000)")
    add("--url", help="benchmark this server instead of a throwaway one (or DATABASE_URL)")
    add("--pgbench", type=Path, help="the pgbench binary (default: the embedded server's)")
    add(
        "--quiet-wait",
        type=float,
        help="before each point, wait up to this many seconds while other processes take"
        f" more than {QUIET * 100:.0f}%% of the CPUs (10; quick 2; 0: never wait)",
    )
    add("--seed", type=int, default=1, help="seed of the clients' random ids (1)")
    add("--out", type=Path, default=ROOT / "benchmarks" / "results", help="output directory")
    args = parser.parse_args(argv)
    quick = args.quick
    args.duration = args.duration or (1.0 if quick else 5.0)
    args.warmup = args.warmup if args.warmup is not None else (0.25 if quick else 0.5)
    args.repeats = args.repeats or (1 if quick else 3)
    args.clients = [
        int(c) for c in (args.clients or (["1", "8"] if quick else ["1", "8", "32", "300"]))
    ]
    args.bulk_rows = args.bulk_rows or (20_000 if quick else 100_000)
    if args.quiet_wait is None:
        args.quiet_wait = 2.0 if quick else 10.0
    if unknown := set(args.workloads) - set(WORKLOADS):
        parser.error(f"unknown workloads {sorted(unknown)}; choose from {WORKLOADS}")
    if unknown := set(args.variants) - set(all_variants):
        parser.error(f"unknown variants {sorted(unknown)}; choose from {all_variants}")
    if min(args.clients) < 1 or args.pool_size < 1 or args.repeats < 1 or args.accounts < 2:
        parser.error("--clients, --pool-size and --repeats must be positive, --accounts >= 2")
    if args.duration <= 0 or args.warmup < 0 or args.bulk_rows < 1:
        parser.error("--duration and --bulk-rows must be positive, --warmup not negative")
    return args


def plan(args: argparse.Namespace, pgbench: Path | None) -> dict[tuple[str, int], list[Job]]:
    """The jobs of one repeat, by (workload, clients), in their base order."""
    pings = {"on": [True], "off": [False], "both": [True, False]}[args.pre_ping]
    jobs: dict[tuple[str, int], list[Job]] = {}
    for workload in (w for w in args.workloads if w != "W3"):
        for clients in args.clients:
            point: list[Job] = []
            if "pgbench" in args.variants and pgbench is not None:
                point.append(Job(workload, clients, "pgbench", "pgbench", None))
            for name, variant in TRANSACTION_VARIANTS.items():
                if name not in args.variants or workload not in variant.workloads:
                    continue
                for ping in pings:
                    label = name if ping or args.pre_ping == "off" else f"{name}-noping"
                    point.append(Job(workload, clients, label, name, ping))
            if args.pre_ping == "on" and workload == "W1" and clients == 8:
                # The cost of the liveness check, measured in the same run.
                point += [
                    Job(workload, clients, f"{name}-noping", name, False)
                    for name in ("uow", "core", "orm")
                    if name in args.variants
                ]
            jobs[workload, clients] = point
    return jobs


def rotate(items: Sequence[T], by: int) -> list[T]:
    """``items`` starting at position ``by``: each repeat runs the variants in another order."""
    if not items:
        return []
    by %= len(items)
    return [*items[by:], *items[:by]]


# -- the server ---------------------------------------------------------------------------


def _libpq(url: str) -> str:
    from sqlalchemy.engine import make_url  # noqa: PLC0415 - only here

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@contextlib.contextmanager
def server(url: str | None) -> Iterator[Server]:
    """The given server, or a throwaway one tuned for benchmarking (removed afterwards)."""
    if url:
        settings = Settings(url=url)  # normalises postgres:// to postgresql+psycopg://
        yield Server(settings.url, _libpq(settings.url), settings.masked_url, False, None, None)
        return
    from uow.testing import EmbeddedPostgres  # noqa: PLC0415 - needs uow[testing]

    with EmbeddedPostgres(max_connections=MAX_CONNECTIONS, settings=SERVER_SETTINGS) as pg:
        description = f"throwaway EmbeddedPostgres on 127.0.0.1:{pg.port} (this machine)"
        pid_file = pg.data_dir / "postmaster.pid"
        yield Server(pg.url, _libpq(pg.url), description, True, pg.bin_dir, pid_file)


def server_settings(conninfo: str) -> dict[str, str]:
    with psycopg.connect(conninfo) as conn:
        rows = conn.execute(
            "SELECT name, setting, unit FROM pg_settings WHERE name = ANY(%s) ORDER BY name",
            (list(REPORTED_SETTINGS),),
        ).fetchall()
    out = {}
    for name, setting, unit in rows:
        if unit == "8kB":
            out[name] = f"{int(setting) * 8 // 1024}MB"
        elif unit == "MB":
            out[name] = f"{setting}MB"
        else:
            out[name] = str(setting)
    return out


def vacuum(conninfo: str) -> None:
    """Clear the previous point's dead rows, so every point starts from the same table."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("VACUUM bench_accounts")


# -- the environment ----------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _git(*args: str) -> str:
    try:
        result = subprocess.run(  # noqa: S603 - fixed git arguments
            ["git", "-C", str(ROOT), *args],  # noqa: S607 - git from PATH
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError:
        return ""
    return result.stdout.strip()


def uow_version() -> str:
    """HEAD, whether uow/ differs from it, and a hash of the uow sources as imported."""
    head = _git("rev-parse", "HEAD") or "unknown"
    dirty = bool(_git("status", "--porcelain", "--", "uow"))
    digest = hashlib.sha256()
    for path in sorted((ROOT / "uow").rglob("*.py")):
        digest.update(path.read_bytes())
    state = "with uncommitted changes in uow/" if dirty else "clean"
    return f"{head} ({state}; sources sha256 {digest.hexdigest()[:12]})"


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def environment(srv: Server, pgbench: Path | None, args: argparse.Namespace) -> dict[str, str]:
    with psycopg.connect(srv.conninfo) as conn:
        version = str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
    return {
        "machine": f"{cores()} CPUs usable (nproc), {_cpu_model()}, {_ram()} RAM",
        "OS": f"{platform.system()} {platform.release()}",
        "Python": platform.python_version(),
        "SQLAlchemy": _version("sqlalchemy"),
        "psycopg": f"{psycopg.__version__} ({psycopg.pq.__impl__}, libpq {psycopg.pq.version()})",
        "psycopg_pool": _version("psycopg-pool"),
        "PostgreSQL": f"{version}, {srv.description}",
        "pgbench": pgbench_version(pgbench) if pgbench else "not found (variant skipped)",
        "uow": uow_version(),
        "date (UTC)": datetime.now(UTC).strftime("%Y-%m-%d %H:%M"),
        "points": (
            f"{args.duration:g} s measured after {args.warmup:g} s warm-up, {args.repeats} repeats,"
            f" pool size {args.pool_size}, pre-ping {args.pre_ping},"
            f" {args.accounts:,} accounts, W3 {args.bulk_rows:,} rows"
        ),
    }


def notes(srv: Server, settings: dict[str, str]) -> list[str]:
    n = cores()
    out = []
    if srv.embedded:
        out.append(
            f"Client and server share this machine's {n} CPU cores: the Python clients compete"
            " with PostgreSQL for CPU, so absolute numbers are low and mostly measure CPU"
            " per transaction. Compare ratios, not absolute tps."
        )
    else:
        out.append(f"The server is remote or separate ({srv.description}); clients have {n} cores.")
    if settings.get("fsync") == "off":
        out.append(
            "The server runs with fsync=off"
            f" (synchronous_commit={settings.get('synchronous_commit')},"
            f" full_page_writes={settings.get('full_page_writes')}): commits do not wait for"
            " the disk, so numbers measure CPU and round trips, not I/O. Never run a real"
            " database like that."
        )
    out.append(
        "Ratios are medians of per-repeat ratios (variant tps / reference tps in the same"
        " repeat); the variants of a point run back to back, their order rotated each repeat."
    )
    return out


def disturbance_note(report: Report) -> str:
    others = [p.measurement.extra.get("other_cpu") for p in report.points]
    others += [b.other_cpu for b in report.bulk]
    known = [x for x in others if isinstance(x, float)]
    if not known:
        return "Whether other processes shared the CPUs is unknown (no /proc, or --url)."
    disturbed = sum(1 for x in known if x > QUIET)
    verdict = (
        "the machine was otherwise quiet"
        if not disturbed
        else f"{disturbed} of {len(known)} points ran while other processes took more than"
        f" {QUIET:.0%} of the CPUs: treat those numbers with suspicion"
    )
    return (
        f"Other processes' share of the CPUs during each point is in the 'other CPU' column"
        f" (largest over repeats; median of all points {statistics.median(known):.0%}): {verdict}."
    )


# -- running ------------------------------------------------------------------------------


class Progress:
    def __init__(self, total: int) -> None:
        self.total, self.done = total, 0
        self.started = time.monotonic()

    def line(self, text: str) -> None:
        self.done += 1
        elapsed = time.monotonic() - self.started
        rate = elapsed / self.done
        left = (self.total - self.done) * rate
        print(
            f"[{self.done:>3}/{self.total}] {text}  ({_clock(elapsed)} elapsed,"
            f" ~{_clock(left)} left)",
            flush=True,
        )


def _clock(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}:{secs:02d}"


class Bench:
    """Runs points against one server; numbers each point for its application_name."""

    def __init__(self, args: argparse.Namespace, srv: Server, pgbench: Path | None) -> None:
        self.args, self.srv, self.pgbench = args, srv, pgbench
        self.seq = 0
        # Only the embedded server's CPU can be told apart from other processes'.
        self.meter = CpuMeter(srv.pid_file) if srv.embedded else None

    def wait_until_quiet(self) -> None:
        """Wait up to --quiet-wait seconds for other processes to leave the CPUs alone."""
        if self.meter is None or self.args.quiet_wait <= 0:
            return
        deadline = time.monotonic() + self.args.quiet_wait
        other = self.meter.measure_idle(0.25)
        if other is None or other <= QUIET:
            return
        print(f"  other processes use {other:.0%} of the CPUs; waiting for quiet...", flush=True)
        while other is not None and other > QUIET and time.monotonic() < deadline:
            other = self.meter.measure_idle(0.5)

    def _metered(self, run: Callable[[], Measurement]) -> Measurement:
        before = self.meter.sample() if self.meter else None
        measurement = run()
        if self.meter is not None:
            measurement.extra["other_cpu"] = self.meter.other(before, self.meter.sample())
        return measurement

    def _name(self, variant: str) -> str:
        self.seq += 1
        return f"bench-{self.seq}-{variant}"[:63]

    def run_job(self, job: Job, repeat: int) -> Measurement:
        """Measure one point; a point that breaks is reported as an error, not raised."""
        args, srv = self.args, self.srv
        name = self._name(job.variant)
        vacuum(srv.conninfo)
        gc.collect()
        self.wait_until_quiet()
        try:
            with ConnectionPoller(srv.conninfo, name) as poller:
                if job.base == "pgbench":
                    pgbench = self.pgbench
                    assert pgbench is not None
                    measurement = self._metered(
                        lambda: run_pgbench(
                            pgbench,
                            srv.conninfo,
                            job.workload,
                            accounts=args.accounts,
                            clients=job.clients,
                            warmup=args.warmup,
                            duration=args.duration,
                            application_name=name,
                        )
                    )
                else:
                    measurement = self._run_threads(job, repeat, name)
            measurement.peak_connections = poller.peak
        except Exception as exc:  # noqa: BLE001 - a broken point is reported, the run goes on
            measurement = summarize([], args.duration, [0] * job.clients, Counter())
            measurement.errors = {f"point failed: {type(exc).__name__}: {str(exc)[:100]}": 1}
        return measurement

    def _run_threads(self, job: Job, repeat: int, name: str) -> Measurement:
        args = self.args
        assert job.pre_ping is not None
        config = Config(self.srv.url, args.pool_size, job.pre_ping, name, args.accounts)
        stack = TRANSACTION_VARIANTS[job.base].stack(config)

        def make_state(index: int) -> WorkerState:
            # The same ids for every variant of a point in a repeat: same contention.
            seed = ((args.seed * 1000 + repeat) * 1000 + job.clients) * 1000 + index
            return WorkerState(seed, args.accounts)

        try:
            stack.warm()
            transaction = stack.transaction(job.workload)
            return self._metered(
                lambda: run_clients(
                    transaction, make_state, job.clients, args.warmup, args.duration
                )
            )
        finally:
            stack.close()

    def run_bulk(self, variant: str, repeat: int, rows: BulkRows) -> BulkPoint:
        """Time one W3 load (pool opened and warm beforehand), then check and empty the table."""
        args, srv = self.args, self.srv
        name = self._name(variant)
        config = Config(srv.url, args.pool_size, args.pre_ping != "off", name, args.accounts)
        truncate_rows(srv.conninfo)
        gc.collect()
        self.wait_until_quiet()
        seconds, error, other = 0.0, None, None
        try:
            stack = BULK_VARIANTS[variant](config)
            try:
                stack.warm()
                before = self.meter.sample() if self.meter else None
                began = time.perf_counter()
                stack.load(rows)
                seconds = time.perf_counter() - began
                other = self.meter.other(before, self.meter.sample()) if self.meter else None
            finally:
                stack.close()
        except Exception as exc:  # noqa: BLE001 - a broken load is reported, the run goes on
            error = f"{type(exc).__name__}: {str(exc)[:100]}"
        found = truncate_rows(srv.conninfo)
        if error is None and found != len(rows):
            error = f"found {found} rows in bench_rows, expected {len(rows)}"
        return BulkPoint(variant, repeat, len(rows), seconds, found, error, other)


def _describe(m: Measurement) -> str:
    errors = f"  ERRORS {m.error_count}" if m.error_count else ""
    other = m.extra.get("other_cpu")
    busy = f"  other CPU {other:.0%}" if isinstance(other, float) and other > QUIET else ""
    return (
        f"{m.tps:>9,.0f} tps  p50 {m.p50_ms:6.2f} ms  p99 {m.p99_ms:7.2f} ms"
        f"  peak conns {m.peak_connections:>3}{errors}{busy}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join(
        ["python", "-m", "benchmarks.run", *(sys.argv[1:] if argv is None else argv)]
    )
    with server(args.url or os.environ.get("DATABASE_URL")) as srv:
        pgbench = find_pgbench(args.pgbench, srv.bin_dir) if "pgbench" in args.variants else None
        settings = server_settings(srv.conninfo)
        report = Report(
            meta={
                "command": command,
                "notes": notes(srv, settings),
                "environment": environment(srv, pgbench, args),
                "server_settings": settings,
                "args": {k: str(v) for k, v in vars(args).items()},
            },
            pool_size=args.pool_size,
        )
        for note in report.meta["notes"]:
            print(f"note: {note}")
        for key, value in report.meta["environment"].items():
            print(f"{key}: {value}")
        create_schema(srv.conninfo, args.accounts)
        jobs = plan(args, pgbench)
        bulk = [v for v in BULK_VARIANTS if v in args.variants] if "W3" in args.workloads else []
        rows = bulk_rows(args.bulk_rows) if bulk else None
        per_job = args.warmup + args.duration + 0.5
        total = (sum(map(len, jobs.values())) + len(bulk)) * args.repeats
        estimate = sum(map(len, jobs.values())) * args.repeats * per_job
        print(f"{total} points; transaction points take about {_clock(estimate)}", flush=True)
        progress = Progress(total)
        bench = Bench(args, srv, pgbench)
        for repeat in range(args.repeats):
            for workload in args.workloads:
                if workload == "W3":
                    assert rows is not None
                    for variant in rotate(bulk, repeat):
                        b = bench.run_bulk(variant, repeat, rows)
                        report.bulk.append(b)
                        outcome = b.error or f"{b.seconds:7.3f} s  {b.rows_per_s:>10,.0f} rows/s"
                        progress.line(f"r{repeat + 1} W3 {variant:<16} {outcome}")
                    continue
                for clients in args.clients:
                    for job in rotate(jobs[workload, clients], repeat):
                        m = bench.run_job(job, repeat)
                        report.points.append(
                            Point(job.workload, job.clients, job.variant, repeat, job.pre_ping, m)
                        )
                        progress.line(
                            f"r{repeat + 1} {workload} {clients:>3} clients {job.variant:<12}"
                            f" {_describe(m)}"
                        )
    report.meta["notes"].append(disturbance_note(report))
    args.out.mkdir(parents=True, exist_ok=True)
    markdown = report.markdown()
    (args.out / "results.md").write_text(markdown)
    (args.out / "results.json").write_text(report.to_json())
    plotted = report.plot(args.out / "results.png")
    print()
    print(markdown)
    written = ["results.md", "results.json", *(["results.png"] if plotted else [])]
    print(f"wrote {', '.join(str(args.out / name) for name in written)}")
    failed = any(p.measurement.error_count for p in report.points) or any(
        b.error for b in report.bulk
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
