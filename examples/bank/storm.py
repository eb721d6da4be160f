"""The storm demo: the same load, a connection per request versus uow, side by side.

    python -m examples.bank.storm [--duration 10] [--processes 4] [--threads 75]

Uses DATABASE_URL when set, and otherwise starts a throwaway PostgreSQL (removed
afterwards) whose max_connections the demo sets itself, so the outcome does not
depend on the machine. Several worker processes times many threads, more clients
than the server accepts connections, each doing transfers for a fixed time, once
per mode:

- naive: the anti-pattern users come from, a new connection per request, with the
  request's application work (``--work-ms``) done inside its transaction;
- uow: the example app's services on uow, one bounded pool per process, same work
  inside the transaction;
- uow-short-tx: the same, with the application work moved before the transaction;
- uow-async: uow-short-tx on AsyncUnitOfWork, each process one event loop running as
  many tasks as the others run threads;
- uow-pgbouncer (only with ``--modes``; needs the ``pgbouncer`` binary): uow-short-tx
  through a PgBouncer in transaction mode (``UOW_PGBOUNCER=transaction``), every thread
  its own client connection, PgBouncer holding the same server-connection budget.
- statements-inline and statements-worker (only with ``--modes``): uow-short-tx's
  transfers, with one request in ``--statement-share`` asking for a monthly statement
  whose rendering takes ``--render-ms``. Inline, the request renders it itself, holding
  its connection and its thread; in workers, it records the request and defers the job
  in one unit of work and answers at once, while ``--job-workers`` processes of
  ``python -m examples.bank worker`` render the statements. The report compares the
  request path (p50/p99 of transfers and of statement requests), transfers per second
  and server connections (the job workers' included, and their budget).

Halfway through each mode, ``uow doctor`` looks at the server with that mode's settings;
its report goes to ``doctor-<mode>.txt`` in ``--out``.

Prints a table per mode, writes ``summary.json`` and ``storm.png`` into ``--out``,
and exits non-zero if uow mode broke a guarantee (a connection error, more
connections than its budget, or a broken invariant).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import random
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import make_url
from sqlalchemy.exc import DBAPIError

import uow
import uow.jobs
import uow.migrations
from examples.bank import async_services, services, statements
from examples.bank.async_services import AsyncBankUnitOfWork
from examples.bank.models import Account
from examples.bank.storm_chart import chart
from examples.bank.storm_report import (
    POOL_EXHAUSTED,
    ModeResult,
    clip,
    print_statement_table,
    print_table,
    verdict,
    written,
)
from examples.bank.unit_of_work import BankUnitOfWork
from uow._ops.doctor import diagnose, render
from uow.testing import EmbeddedPostgres, PgBouncer

MODES = ("naive", "uow", "uow-short-tx", "uow-async")
STATEMENT_MODES = ("statements-inline", "statements-worker")
EXTRA_MODES = ("uow-pgbouncer", *STATEMENT_MODES)
APP_ROLE = "bank_app"
JOBS_NAME = "storm-jobs"  # the job workers' application_name (procrastinate's: uow-jobs:...)
INITIAL_BALANCE = 10_000


# -- the server ---------------------------------------------------------------------------


@contextlib.contextmanager
def server(max_connections: int) -> Iterator[tuple[str, str, str]]:
    """Yield (admin URL, application URL, description) for the demo's database."""
    url = os.environ.get("DATABASE_URL")
    if url:
        settings = uow.Settings(url=url)
        yield settings.url, settings.url, f"DATABASE_URL ({settings.masked_url})"
        return
    # The server asks every role for its password (scram): the app's is made up here.
    app_password = secrets.token_urlsafe(24)
    with EmbeddedPostgres(max_connections=max_connections) as pg:
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            # The application connects as an ordinary role, as in production: the
            # superuser slots stay free for the admin, as they should.
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(APP_ROLE), sql.Literal(app_password)
                )
            )
            conn.execute("CREATE DATABASE bank")
            conn.execute(
                sql.SQL("ALTER DATABASE bank OWNER TO {}").format(sql.Identifier(APP_ROLE))
            )
        admin = pg.url_for("bank")
        app_url = make_url(admin).set(username=APP_ROLE, password=app_password)
        app = app_url.render_as_string(hide_password=False)
        yield (
            admin,
            app,
            f"embedded PostgreSQL {pg.server_version() // 10000},"
            f" max_connections={max_connections}",
        )


def libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def prepare(admin_url: str, app_url: str, accounts: int) -> int:
    """Migrate as the owner role, seed accounts; returns the total balance."""
    uow.migrations.upgrade(app_url, "head")
    with psycopg.connect(libpq(admin_url), autocommit=True) as conn:
        # CASCADE: statement_requests goes with the accounts, procrastinate's events with
        # its jobs.
        conn.execute(
            "TRUNCATE accounts, ledger, procrastinate_jobs, procrastinate_workers"
            " RESTART IDENTITY CASCADE"
        )
    with uow.Database(uow.Settings(url=app_url, application_name="storm-setup")) as db:
        for _ in range(accounts):
            account = services.open_account(BankUnitOfWork(db), "storm")
            services.deposit(BankUnitOfWork(db), account, INITIAL_BALANCE, key=f"seed-{account}")
    return accounts * INITIAL_BALANCE


def server_limits(admin_url: str) -> tuple[int, int]:
    with psycopg.connect(libpq(admin_url)) as conn:
        row = conn.execute(
            "SELECT current_setting('max_connections')::int,"
            " current_setting('superuser_reserved_connections')::int"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


# -- the workers (child processes) --------------------------------------------------------


def classify(exc: BaseException) -> tuple[str, bool]:
    """Name an error for the report; the flag says whether it is a connection error."""
    if isinstance(exc, uow.PoolExhausted):
        return POOL_EXHAUSTED, False
    if isinstance(exc, uow.DatabaseUnavailable | psycopg.OperationalError) and not getattr(
        exc, "sqlstate", None
    ):
        # psycopg reports no SQLSTATE for a refused connection: show the server's words.
        return f"connect failed: {clip(str(exc).rsplit('FATAL:', 1)[-1])}", True
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    state = getattr(orig, "sqlstate", None)
    if state:
        return f"SQLSTATE {state} ({type(orig).__name__})", state.startswith(("08", "53", "57P"))
    return f"{type(exc).__name__}: {clip(str(exc))}", False


def naive_transfer(dsn: str, source: int, target: int, amount: int, work: float) -> bool:
    """One request the way services often start: its own connection, work inside the transaction."""
    with psycopg.connect(dsn, application_name="storm-naive", connect_timeout=10) as conn:
        balances: dict[int, int] = dict(
            conn.execute(
                "SELECT id, balance FROM accounts WHERE id = ANY(%s) ORDER BY id FOR UPDATE",
                ([source, target],),
            ).fetchall()
        )
        time.sleep(work)
        if balances[source] < amount:
            return False
        conn.execute("UPDATE accounts SET balance = balance - %s WHERE id = %s", (amount, source))
        conn.execute("UPDATE accounts SET balance = balance + %s WHERE id = %s", (amount, target))
        conn.execute(
            "INSERT INTO ledger (idempotency_key, source_id, target_id, amount)"
            " VALUES (%s, %s, %s, %s)",
            (uuid.uuid4().hex, source, target, amount),
        )
    return True


def uow_transfer(mode: str, source: int, target: int, amount: int, work: float) -> bool:
    key = uuid.uuid4().hex
    try:
        if mode in ("uow-short-tx", "uow-pgbouncer", *STATEMENT_MODES):
            time.sleep(work)  # the application's own work, before the transaction
            services.transfer(BankUnitOfWork(), source, target, amount, key=key)
            return True
        with BankUnitOfWork() as outer:
            outer.accounts.list(
                Account.id.in_([source, target]), order_by=Account.id, for_update=True
            )
            time.sleep(work)  # ...holding the connection and the row locks meanwhile
            services.transfer(BankUnitOfWork(), source, target, amount, key=key)  # joins
        return True
    except services.InsufficientFunds:
        return False


@dataclass(frozen=True)
class Load:
    """What each worker process runs (picklable, for spawn)."""

    mode: str
    app_url: str
    threads: int
    pool_size: int
    accounts: int
    work: float
    duration: float
    pgbouncer: str = "off"
    statement_share: float = 0.0
    render: float = 0.0
    statements_dir: str = ""


def statement_request(load: Load, account: int) -> bool:
    """Ask for the account's statement of this month: render it inline, or defer its job."""
    month = f"{datetime.now(UTC):%Y-%m}"
    if load.mode == "statements-inline":
        directory = Path(load.statements_dir)
        statements.render_now(BankUnitOfWork(), account, month, directory, pause=load.render)
    else:
        statements.request_statement(BankUnitOfWork(), account, month)
    return True


class Recorder:
    """One worker process's outcomes, shared by its clients (threads or tasks)."""

    def __init__(self, committed: Any, start: float) -> None:
        self.latencies: list[float] = []
        self.statement_latencies: list[float] = []
        self.done_at: list[float] = []
        self.errors: Counter[str] = Counter()
        self.connection_errors = 0
        self.declined = 0
        self._committed = committed
        self._start = start
        self._lock = threading.Lock()

    def record(
        self, began: float, ok: bool, error: Exception | None = None, *, statement: bool = False
    ) -> None:
        ended = time.monotonic()
        with self._lock:
            if error is not None:
                kind, is_connection = classify(error)
                self.errors[kind] += 1
                self.connection_errors += is_connection
            elif statement:
                self.statement_latencies.append(ended - began)
                return  # not a transfer: neither counted nor in the throughput
            elif ok:
                self.latencies.append(ended - began)
                self.done_at.append(ended - self._start)
            else:
                self.declined += 1
        if ok and error is None:
            with self._committed.get_lock():
                self._committed.value += 1

    def report(self) -> dict[str, Any]:
        return {
            "latencies": self.latencies,
            "statement_latencies": self.statement_latencies,
            "done_at": self.done_at,
            "errors": dict(self.errors),
            "connection_errors": self.connection_errors,
            "declined": self.declined,
        }


def pick(load: Load, rng: random.Random) -> tuple[int, int, int]:
    source, target = rng.sample(range(1, load.accounts + 1), 2)
    return source, target, rng.randint(1, 100)


def thread_client(load: Load, recorder: Recorder, deadline: float) -> None:
    """One client thread: transfers until the deadline, naive or on uow."""
    dsn = libpq(load.app_url)
    rng = random.Random()  # noqa: S311 - load generation, not security
    while time.monotonic() < deadline:
        source, target, amount = pick(load, rng)
        statement = load.statement_share > 0 and rng.random() < load.statement_share
        began = time.monotonic()
        try:
            if statement:
                ok = statement_request(load, source)
            elif load.mode == "naive":
                ok = naive_transfer(dsn, source, target, amount, load.work)
            else:
                ok = uow_transfer(load.mode, source, target, amount, load.work)
        except Exception as exc:  # noqa: BLE001 - the demo counts every failure by kind
            recorder.record(began, False, exc)
            time.sleep(0.01)  # a client that failed does not retry in a hot loop
            continue
        recorder.record(began, ok, statement=statement)


async def task_client(load: Load, recorder: Recorder, deadline: float) -> None:
    """One client task: uow-short-tx's transfers on AsyncUnitOfWork."""
    rng = random.Random()  # noqa: S311 - load generation, not security
    while time.monotonic() < deadline:
        source, target, amount = pick(load, rng)
        began = time.monotonic()
        try:
            await asyncio.sleep(load.work)  # the application's own work, before the transaction
            unit = AsyncBankUnitOfWork()
            await async_services.transfer(unit, source, target, amount, key=uuid.uuid4().hex)
        except services.InsufficientFunds:
            recorder.record(began, False)
            continue
        except Exception as exc:  # noqa: BLE001 - the demo counts every failure by kind
            recorder.record(began, False, exc)
            await asyncio.sleep(0.01)
            continue
        recorder.record(began, True)


async def task_clients(load: Load, recorder: Recorder, deadline: float) -> None:
    await asyncio.gather(*(task_client(load, recorder, deadline) for _ in range(load.threads)))
    await uow.get_database().dispose_async()


def worker(load: Load, ready: Any, go: Any, results: Any, committed: Any) -> None:
    """A worker process: ``threads`` clients (or tasks) doing transfers until the deadline."""
    if load.mode != "naive":
        uow.configure(
            load.app_url,
            pool_size=load.pool_size,
            max_overflow=0,
            application_name="storm-uow",
            pgbouncer=load.pgbouncer,
        )
    ready.put(os.getpid())
    go.wait()
    cpu = time.process_time()  # all of this process's threads
    start = time.monotonic()
    deadline = start + load.duration
    recorder = Recorder(committed, start)
    if load.mode == "uow-async":
        asyncio.run(task_clients(load, recorder, deadline))  # one event loop per process
    else:
        clients = [
            threading.Thread(target=thread_client, args=(load, recorder, deadline))
            for _ in range(load.threads)
        ]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join()
    results.put({**recorder.report(), "cpu_s": time.process_time() - cpu})


# -- one run ------------------------------------------------------------------------------


# The storm's connections: its clients' (storm-*), and the job workers', whose jobs run on
# uow's pool (storm-jobs) and whose procrastinate connector marks its own (uow-jobs:...).
_POLL = f"""
SELECT count(*) FILTER (WHERE (application_name LIKE 'storm-%%'
                               AND application_name <> 'storm-setup')
                              OR application_name LIKE 'uow-jobs:{JOBS_NAME}%%'),
       count(*) FILTER (WHERE application_name LIKE '{JOBS_NAME}%%'
                              OR application_name LIKE 'uow-jobs:{JOBS_NAME}%%')
FROM pg_stat_activity
WHERE datname = current_database() AND backend_type = 'client backend'
  AND pid <> pg_backend_pid()
"""


def poll_connections(
    admin_url: str,
    stop: threading.Event,
    samples: list[tuple[float, int]],
    start: list[float],
    jobs: list[int],
) -> None:
    """Sample the storm's server connections every 50 ms; ``jobs``: the job workers' share."""
    with psycopg.connect(libpq(admin_url), autocommit=True) as conn:
        while not stop.is_set():
            row = conn.execute(_POLL).fetchone()
            assert row is not None
            samples.append((time.monotonic() - start[0], int(row[0])))
            jobs.append(int(row[1]))
            time.sleep(0.05)


def doctor(load: Load, processes: int, path: Path) -> None:
    """Write what ``uow doctor`` sees right now, with the mode's settings, to ``path``."""
    settings = uow.Settings(
        url=load.app_url,
        pool_size=load.pool_size,
        processes=processes,
        pgbouncer=load.pgbouncer,
        application_name="uow-doctor",  # not storm-*: the poller counts those
    )
    try:
        text = render(diagnose(settings))
    except (uow.UnitOfWorkError, DBAPIError) as exc:
        text = f"uow doctor: cannot reach {settings.masked_url}: {classify(exc)[0]}"
    path.write_text(f"$ uow doctor   # halfway through the {load.mode} storm\n{text}\n")


def make_load(mode: str, args: argparse.Namespace, app_url: str) -> Load:
    bounced = mode == "uow-pgbouncer"
    return Load(
        mode=mode,
        app_url=args.pgbouncer_url if bounced else app_url,
        threads=args.threads,
        # Client connections to PgBouncer are cheap: one per thread. PgBouncer's own pool
        # holds the server connections, within the same budget as the other modes.
        pool_size=args.threads if bounced else args.pool_size,
        accounts=args.accounts,
        work=args.work_ms / 1000,
        duration=args.duration,
        pgbouncer="transaction" if bounced else "off",
        statement_share=args.statement_share if mode in STATEMENT_MODES else 0.0,
        render=args.render_ms / 1000,
        statements_dir=str(args.statements_dir),
    )


def job_budget(args: argparse.Namespace) -> int:
    """The job workers' connections at most: per worker, uow's pool for the jobs' units of
    work (one per concurrent job) plus procrastinate's pool and its LISTEN connection."""
    workers: int = args.job_workers
    concurrency: int = args.job_concurrency
    return workers * (concurrency + uow.jobs.DEFAULT_MAX_SIZE + 1)


def start_job_workers(
    args: argparse.Namespace, app_url: str, admin_url: str
) -> list[subprocess.Popen[bytes]]:
    """Start ``--job-workers`` processes of ``python -m examples.bank worker``; wait for them."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("UOW_", "DATABASE_"))},
        "DATABASE_URL": app_url,
        "UOW_APPLICATION_NAME": JOBS_NAME,
        "UOW_POOL_SIZE": str(args.job_concurrency),  # one connection per job running
        "UOW_MAX_OVERFLOW": "0",
        "UOW_PROCESSES": str(args.job_workers),
        "BANK_STATEMENTS_DIR": str(args.statements_dir),
        "BANK_STATEMENT_PAUSE_MS": str(args.render_ms),
    }
    log = (args.statements_dir / "workers.log").open("ab")
    command = [sys.executable, "-m", "examples.bank", "worker"]
    command += ["--concurrency", str(args.job_concurrency), "--processes", str(args.job_workers)]
    command += ["--shutdown-timeout", "30"]
    procs = [
        subprocess.Popen(  # noqa: S603 - our own interpreter and module
            command, env=env, cwd=Path(__file__).resolve().parents[2], stdout=log, stderr=log
        )
        for _ in range(args.job_workers)
    ]
    log.close()
    # Ready when each worker has registered itself (procrastinate's heartbeat table).
    deadline = time.monotonic() + 60
    with psycopg.connect(libpq(admin_url), autocommit=True) as conn:
        while True:
            row = conn.execute("SELECT count(*) FROM procrastinate_workers").fetchone()
            if row is not None and row[0] >= args.job_workers:
                return procs
            if any(proc.poll() is not None for proc in procs) or time.monotonic() > deadline:
                stop_job_workers(procs)
                tail = (args.statements_dir / "workers.log").read_text(errors="replace")[-2000:]
                raise SystemExit(f"the job workers did not start:\n{tail}")
            time.sleep(0.1)


def stop_job_workers(procs: list[subprocess.Popen[bytes]]) -> list[int]:
    """SIGTERM (procrastinate finishes the running jobs), then wait; returns exit codes."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    codes = []
    for proc in procs:
        try:
            codes.append(proc.wait(timeout=60))
        except subprocess.TimeoutExpired:
            proc.kill()
            codes.append(proc.wait())
    return codes


def statement_counts(admin_url: str) -> tuple[int, int, int]:
    """Statement requests done, pending and failed."""
    with psycopg.connect(libpq(admin_url), autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE status = 'done'),"
            " count(*) FILTER (WHERE status = 'pending'),"
            " count(*) FILTER (WHERE status = 'failed') FROM statement_requests"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


def drain(admin_url: str, timeout: float) -> float | None:
    """Wait for the job workers to render every pending statement; seconds, or None."""
    began = time.monotonic()
    while statement_counts(admin_url)[1]:
        if time.monotonic() - began > timeout:
            return None
        time.sleep(0.1)
    return time.monotonic() - began


def run_mode(
    mode: str, args: argparse.Namespace, admin_url: str, app_url: str, total: int
) -> ModeResult:
    workers = start_job_workers(args, app_url, admin_url) if mode == "statements-worker" else []
    try:
        return run_clients(
            mode, args, admin_url=admin_url, app_url=app_url, total=total, workers=workers
        )
    finally:
        stop_job_workers(workers)  # a no-op once they have stopped


def run_clients(
    mode: str,
    args: argparse.Namespace,
    *,
    admin_url: str,
    app_url: str,
    total: int,
    workers: list[subprocess.Popen[bytes]],
) -> ModeResult:
    ctx = mp.get_context("spawn")
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    committed = ctx.Value("q", 0)
    load = make_load(mode, args, app_url)
    procs = [
        ctx.Process(target=worker, args=(load, ready, go, results, committed))
        for _ in range(args.processes)
    ]
    for proc in procs:
        proc.start()
    for _ in procs:
        ready.get(timeout=120)
    samples: list[tuple[float, int]] = []
    job_samples: list[int] = []
    start = [time.monotonic()]
    stop = threading.Event()
    poller = threading.Thread(
        target=poll_connections, args=(admin_url, stop, samples, start, job_samples)
    )
    poller.start()
    go.set()
    budget = None if mode == "naive" else args.processes * args.pool_size
    if workers:
        budget = (budget or 0) + job_budget(args)
    watch(
        load,
        args,
        procs=procs,
        results=results,
        committed=committed,
        samples=samples,
        start=start[0],
    )
    reports = [results.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join()
    window = finish_job_workers(workers, args, admin_url) if workers else None
    stop.set()
    poller.join()

    result = summarize(mode, args, reports, samples, budget)
    if mode in STATEMENT_MODES:
        add_statements(
            result,
            reports,
            job_samples=job_samples,
            job_workers=len(workers),
            window=window,
            admin_url=admin_url,
        )
    with uow.Database(uow.Settings(url=app_url, application_name="storm-setup")) as db:
        audit = services.audit(BankUnitOfWork(db))
    result.invariant_holds = bool(audit.ok) and audit.total_balance == total
    result.invariant_detail = f"total {audit.total_balance} of {total}; {audit}"
    return result


def watch(
    load: Load,
    args: argparse.Namespace,
    *,
    procs: list[Any],
    results: Any,
    committed: Any,
    samples: list[tuple[float, int]],
    start: float,
) -> None:
    """Show progress until the clients are done; run ``uow doctor`` halfway through."""
    mode = load.mode
    doctor_at, doctored = start + args.duration / 2, False
    # On a terminal the progress line redraws itself; in a log, one line a second.
    tty = sys.stdout.isatty()
    prefix, end = ("\r", "") if tty else ("", "\n")
    while any(proc.is_alive() for proc in procs) and results.qsize() < len(procs):
        if not doctored and time.monotonic() >= doctor_at:
            doctor(load, args.processes, args.out / f"doctor-{mode}.txt")
            doctored = True
        elapsed = time.monotonic() - start
        peak = max((n for _, n in samples), default=0)
        print(
            f"{prefix}  {mode:<13} {min(elapsed, args.duration):5.1f}/{args.duration:g}s"
            f"  committed {committed.value:>7}"
            f"  connections now {samples[-1][1] if samples else 0:>4}  peak {peak:>4}",
            end=end,
            flush=True,
        )
        time.sleep(0.5 if tty else 1.0)
    if tty:
        print()


def finish_job_workers(
    workers: list[subprocess.Popen[bytes]], args: argparse.Namespace, admin_url: str
) -> tuple[int, float | None]:
    """Once the clients are done: statements rendered by then, and seconds to render the rest."""
    rendered_in_window = statement_counts(admin_url)[0]
    drained = drain(admin_url, args.drain_timeout)
    codes = stop_job_workers(workers)
    if any(codes):
        print(f"  job workers exited with {codes}; see {args.statements_dir}/workers.log")
    return rendered_in_window, drained


def percentiles(latencies: list[float]) -> tuple[float, float]:
    """p50 and p99 of sorted seconds, in milliseconds (0 for none)."""
    if not latencies:
        return 0.0, 0.0
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    return statistics.median(latencies) * 1000, p99 * 1000


def summarize(
    mode: str,
    args: argparse.Namespace,
    reports: list[dict[str, Any]],
    samples: list[tuple[float, int]],
    budget: int | None,
) -> ModeResult:
    """The mode's result from its processes' reports and the connection samples."""
    result = ModeResult(mode=mode, clients=args.processes * args.threads, duration=args.duration)
    latencies = sorted(x for r in reports for x in r["latencies"])
    errors: Counter[str] = Counter()
    for report in reports:
        errors.update(report["errors"])
        result.connection_errors += report["connection_errors"]
        result.declined += report["declined"]
    result.errors = dict(errors.most_common())
    result.committed = len(latencies)
    cpu = sum(report["cpu_s"] for report in reports)
    result.cpu_ms_per_transfer = cpu * 1000 / result.committed if result.committed else 0.0
    result.p50_ms, result.p99_ms = percentiles(latencies)
    result.peak_connections = max((n for _, n in samples), default=0)
    result.budget = budget
    # The job workers' drain runs past the window: the timeline shows the window only.
    result.connections_timeline = [(t, n) for t, n in samples if t <= args.duration]
    result.throughput_timeline = throughput(
        [t for r in reports for t in r["done_at"]], args.duration
    )
    return result


def add_statements(
    result: ModeResult,
    reports: list[dict[str, Any]],
    *,
    job_samples: list[int],
    job_workers: int,
    window: tuple[int, float | None] | None,
    admin_url: str,
) -> None:
    """A statement mode's figures: requests, their latency, what was rendered and when."""
    waits = sorted(x for r in reports for x in r["statement_latencies"])
    result.statements = len(waits)
    result.statement_p50_ms, result.statement_p99_ms = percentiles(waits)
    result.job_workers = job_workers
    result.peak_job_connections = max(job_samples, default=0)
    done, result.statements_pending, result.statements_failed = statement_counts(admin_url)
    if window is None:  # inline: each answered request rendered its statement itself
        result.statements_rendered = result.rendered_in_window = result.statements
    else:
        result.statements_rendered = done
        result.rendered_in_window, result.drain_s = window


def throughput(
    done_at: list[float], duration: float, step: float = 0.5
) -> list[tuple[float, float]]:
    buckets = Counter(int(t / step) for t in done_at if t <= duration)
    return [((i + 1) * step, buckets.get(i, 0) / step) for i in range(int(duration / step))]


# -- the report ---------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per mode (10)")
    parser.add_argument("--processes", type=int, default=4, help="worker processes (4)")
    parser.add_argument("--threads", type=int, default=75, help="client threads per process (75)")
    parser.add_argument("--max-connections", type=int, default=100, help="embedded server's (100)")
    parser.add_argument("--pool-size", type=int, default=0, help="uow pool per process (auto)")
    parser.add_argument("--work-ms", type=float, default=50.0, help="application work per request")
    parser.add_argument("--accounts", type=int, default=200, help="accounts to spread load over")
    parser.add_argument(
        "--modes", default=",".join(MODES), help=f"comma-separated, of {MODES + EXTRA_MODES}"
    )
    parser.add_argument("--out", type=Path, default=Path("storm-results"), help="output folder")
    heavy = parser.add_argument_group("statement modes (statements-inline, statements-worker)")
    heavy.add_argument(
        "--statement-share", type=float, default=0.1, help="requests asking for a statement (0.1)"
    )
    heavy.add_argument("--render-ms", type=float, default=200.0, help="rendering one (200)")
    heavy.add_argument("--job-workers", type=int, default=2, help="worker processes (2)")
    heavy.add_argument("--job-concurrency", type=int, default=4, help="jobs per worker (4)")
    heavy.add_argument(
        "--drain-timeout", type=float, default=120.0, help="seconds to render the backlog (120)"
    )
    args = parser.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = set(args.modes) - set(MODES + EXTRA_MODES)
    if unknown or not args.modes:
        parser.error(f"unknown modes {sorted(unknown)}; choose from {MODES + EXTRA_MODES}")
    if min(args.processes, args.threads, args.accounts - 1) < 1 or args.duration <= 0:
        parser.error("--processes, --threads and --duration must be positive, --accounts >= 2")
    if not 0 <= args.statement_share <= 1 or args.render_ms < 0:
        parser.error("--statement-share must be from 0 to 1, --render-ms 0 or more")
    if min(args.job_workers, args.job_concurrency) < 1:
        parser.error("--job-workers and --job-concurrency must be 1 or more")
    return args


def start_pgbouncer(stack: contextlib.ExitStack, app_url: str, args: argparse.Namespace) -> str:
    """Start PgBouncer (transaction mode) before the server; return the app's URL through it."""
    url = make_url(app_url)
    assert url.port and url.host and url.database, "uow-pgbouncer needs a TCP URL"
    user = url.username or "postgres"
    bouncer = stack.enter_context(
        PgBouncer(
            url.port,
            server_host=url.host,
            default_pool_size=args.processes * args.pool_size,
            max_client_conn=args.processes * args.threads + 50,
            # PgBouncer logs in to the server with the app's own password.
            users={user: url.password} if url.password else (user,),
            # Lets `uow doctor`, connecting as the app, read PgBouncer's settings.
            settings={"stats_users": url.username or "postgres"},
        )
    )
    return bouncer.url_for(url.database, user=user)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with server(args.max_connections) as (admin_url, app_url, description):
        max_connections, reserved = server_limits(admin_url)
        if not args.pool_size:
            # Leave the reserved slots and a little headroom; 10 per process is plenty.
            args.pool_size = max(1, min(10, (max_connections - reserved - 5) // args.processes))
        clients = args.processes * args.threads
        print(f"server: {description}")
        print(
            f"load: {args.processes} processes x {args.threads} threads = {clients} clients for"
            f" {args.duration:g}s per mode, {args.work_ms:g} ms of application work per request;"
            f" uow pool {args.pool_size} per process (budget {args.processes * args.pool_size})"
        )
        total = prepare(admin_url, app_url, args.accounts)
        args.out.mkdir(parents=True, exist_ok=True)
        with contextlib.ExitStack() as stack:
            # The statements rendered (and the job workers' log) go away with the run.
            args.statements_dir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            if "uow-pgbouncer" in args.modes:
                args.pgbouncer_url = start_pgbouncer(stack, app_url, args)
            results = [run_mode(mode, args, admin_url, app_url, total) for mode in args.modes]
    print()
    print_table(results, max_connections)
    if any(r.mode in STATEMENT_MODES for r in results):
        print()
        print_statement_table(results)
    lines = verdict(results)
    print()
    print("verdict:")
    print("\n".join(lines))
    summary = {
        "max_connections": max_connections,
        "processes": args.processes,
        "threads": args.threads,
        "work_ms": args.work_ms,
        "pool_size": args.pool_size,
        "statement_share": args.statement_share,
        "render_ms": args.render_ms,
        "job_workers": args.job_workers,
        "job_concurrency": args.job_concurrency,
        "modes": [{**asdict(r), "per_second": r.per_second} for r in results],
        "verdict": lines,
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    chart(summary["modes"], args.out / "storm.png", max_connections)
    doctors = [f"doctor-{mode}.txt" for mode in args.modes]
    print(written(args.out, ["summary.json", "storm.png", *doctors]))
    return 1 if any(line.startswith("FAIL") for line in lines) else 0


if __name__ == "__main__":
    sys.exit(main())
