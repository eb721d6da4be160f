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
import statistics
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import make_url
from sqlalchemy.exc import DBAPIError

import uow
import uow.migrations
from examples.bank import async_services, services
from examples.bank.async_services import AsyncBankUnitOfWork
from examples.bank.models import Account
from examples.bank.storm_chart import chart
from examples.bank.storm_report import (
    POOL_EXHAUSTED,
    ModeResult,
    clip,
    print_table,
    verdict,
    written,
)
from examples.bank.unit_of_work import BankUnitOfWork
from uow._ops.doctor import diagnose, render
from uow.testing import EmbeddedPostgres, PgBouncer

MODES = ("naive", "uow", "uow-short-tx", "uow-async")
EXTRA_MODES = ("uow-pgbouncer",)
APP_ROLE = "bank_app"
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
        conn.execute("TRUNCATE accounts, ledger RESTART IDENTITY CASCADE")
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
        if mode in ("uow-short-tx", "uow-pgbouncer"):
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


class Recorder:
    """One worker process's outcomes, shared by its clients (threads or tasks)."""

    def __init__(self, committed: Any, start: float) -> None:
        self.latencies: list[float] = []
        self.done_at: list[float] = []
        self.errors: Counter[str] = Counter()
        self.connection_errors = 0
        self.declined = 0
        self._committed = committed
        self._start = start
        self._lock = threading.Lock()

    def record(self, began: float, ok: bool, error: Exception | None = None) -> None:
        ended = time.monotonic()
        with self._lock:
            if error is not None:
                kind, is_connection = classify(error)
                self.errors[kind] += 1
                self.connection_errors += is_connection
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
        began = time.monotonic()
        try:
            if load.mode == "naive":
                ok = naive_transfer(dsn, source, target, amount, load.work)
            else:
                ok = uow_transfer(load.mode, source, target, amount, load.work)
        except Exception as exc:  # noqa: BLE001 - the demo counts every failure by kind
            recorder.record(began, False, exc)
            time.sleep(0.01)  # a client that failed does not retry in a hot loop
            continue
        recorder.record(began, ok)


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
    results.put(recorder.report())


# -- one run ------------------------------------------------------------------------------


def poll_connections(
    admin_url: str, stop: threading.Event, samples: list[tuple[float, int]], start: list[float]
) -> None:
    with psycopg.connect(libpq(admin_url), autocommit=True) as conn:
        while not stop.is_set():
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
                " AND application_name LIKE 'storm-%%' AND application_name <> 'storm-setup'"
            ).fetchone()
            assert row is not None
            samples.append((time.monotonic() - start[0], int(row[0])))
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
    )


def run_mode(
    mode: str, args: argparse.Namespace, admin_url: str, app_url: str, total: int
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
    start = [time.monotonic()]
    stop = threading.Event()
    poller = threading.Thread(target=poll_connections, args=(admin_url, stop, samples, start))
    poller.start()
    go.set()
    budget = None if mode == "naive" else args.processes * args.pool_size
    doctor_at, doctored = start[0] + args.duration / 2, False
    # On a terminal the progress line redraws itself; in a log, one line a second.
    tty = sys.stdout.isatty()
    prefix, end = ("\r", "") if tty else ("", "\n")
    while any(proc.is_alive() for proc in procs) and results.qsize() < len(procs):
        if not doctored and time.monotonic() >= doctor_at:
            doctor(load, args.processes, args.out / f"doctor-{mode}.txt")
            doctored = True
        elapsed = time.monotonic() - start[0]
        peak = max((n for _, n in samples), default=0)
        print(
            f"{prefix}  {mode:<13} {min(elapsed, args.duration):5.1f}/{args.duration:g}s"
            f"  committed {committed.value:>7}"
            f"  connections now {samples[-1][1] if samples else 0:>4}  peak {peak:>4}",
            end=end,
            flush=True,
        )
        time.sleep(0.5 if tty else 1.0)
    reports = [results.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join()
    stop.set()
    poller.join()
    if tty:
        print()

    result = ModeResult(mode=mode, clients=args.processes * args.threads, duration=args.duration)
    latencies = sorted(x for r in reports for x in r["latencies"])
    errors: Counter[str] = Counter()
    for report in reports:
        errors.update(report["errors"])
        result.connection_errors += report["connection_errors"]
        result.declined += report["declined"]
    result.errors = dict(errors.most_common())
    result.committed = len(latencies)
    if latencies:
        result.p50_ms = statistics.median(latencies) * 1000
        result.p99_ms = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000
    result.peak_connections = max((n for _, n in samples), default=0)
    result.budget = budget
    result.connections_timeline = samples
    result.throughput_timeline = throughput(
        [t for r in reports for t in r["done_at"]], args.duration
    )
    with uow.Database(uow.Settings(url=app_url, application_name="storm-setup")) as db:
        audit = services.audit(BankUnitOfWork(db))
    result.invariant_holds = bool(audit.ok) and audit.total_balance == total
    result.invariant_detail = f"total {audit.total_balance} of {total}; {audit}"
    return result


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
    args = parser.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = set(args.modes) - set(MODES + EXTRA_MODES)
    if unknown or not args.modes:
        parser.error(f"unknown modes {sorted(unknown)}; choose from {MODES + EXTRA_MODES}")
    if min(args.processes, args.threads, args.accounts - 1) < 1 or args.duration <= 0:
        parser.error("--processes, --threads and --duration must be positive, --accounts >= 2")
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
            if "uow-pgbouncer" in args.modes:
                args.pgbouncer_url = start_pgbouncer(stack, app_url, args)
            results = [run_mode(mode, args, admin_url, app_url, total) for mode in args.modes]
    print()
    print_table(results, max_connections)
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
