"""Jobs run by real procrastinate worker processes (``python -m tests.jobs.jobs_app``).

What a worker sees of a unit of work's deferral: nothing before COMMIT, nothing after a
rollback, one run after a commit (sync and async). A worker killed with SIGKILL mid-job:
procrastinate's stalled-job recipe puts the job back, and the job's idempotent design
applies its effect once; SIGTERM lets the running job finish. The connections a worker
holds, a worker that does not fit in the budget refusing to start, and 1,000 jobs deferred
by 16 threads and run by 4 workers: each exactly once, with the server's connections
within the budget docs/guide/jobs.md computes. Every worker must exit 0 on SIGTERM at the
end of its test.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import text

import uow
import uow.jobs
from tests.conftest import MakeDatabase, libpq_dsn, run
from tests.helpers import ROOT, run_python, wait_for

STALLED_AFTER = 2.0
"""Seconds without a heartbeat before a worker's jobs are stalled (``JOBS_STALLED_AFTER``),
in the tests that kill a worker. The others keep 30 s: on a loaded machine a live worker
may miss 2 s of heartbeats, and its running job would be retried, running twice."""

TABLES = """
CREATE TABLE IF NOT EXISTS job_requests (
    key text PRIMARY KEY,
    thread int NOT NULL
);
CREATE TABLE IF NOT EXISTS job_runs (
    id bigserial PRIMARY KEY,
    job_id bigint NOT NULL,
    key text NOT NULL,
    attempt int NOT NULL,
    pid int NOT NULL
);
CREATE TABLE IF NOT EXISTS job_effects (
    key text PRIMARY KEY,
    job_id bigint NOT NULL,
    pid int NOT NULL
);
"""
"""The tables tests/jobs/jobs_app.py's tasks write."""

PROCRASTINATE_MAX_SIZE = uow.jobs.DEFAULT_MAX_SIZE


def per_worker(concurrency: int) -> int:
    """The connections a worker may hold: procrastinate's pool, its LISTEN connection, and
    the uow pool its tasks use (``UOW_POOL_SIZE`` = concurrency, ``UOW_MAX_OVERFLOW=0``)."""
    return PROCRASTINATE_MAX_SIZE + 1 + concurrency


OBSERVER = "uow-test-observer"
"""application_name of the tests' own connections, left out of the counts."""


# -- a database with procrastinate's schema and the tasks' tables ---------------------------


@pytest.fixture(scope="module", autouse=True)
def task_tables(jobs_url: str) -> None:
    """jobs_app's tables in the module's jobs database (conftest.py: migrated to head)."""
    with psycopg.connect(libpq_dsn(jobs_url), autocommit=True) as conn:
        conn.execute(TABLES.encode())


@pytest.fixture
def side(jobs_url: str, jobs_db: uow.Database) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to the jobs database; jobs_db empties procrastinate's tables,
    this the tasks' ones."""
    with psycopg.connect(libpq_dsn(jobs_url), autocommit=True, application_name=OBSERVER) as conn:
        conn.execute("TRUNCATE job_requests, job_runs, job_effects RESTART IDENTITY")
        yield conn


@pytest.fixture
def tasks(jobs_db: uow.Database) -> Any:
    """The jobs module, imported as the web process imports it (the default is installed)."""
    # Imported here: the module builds its app from the default database at import.
    from tests.jobs import jobs_app  # noqa: PLC0415

    return jobs_app


# -- worker processes -----------------------------------------------------------------------


class Workers:
    """Worker processes on one database; at the end each gets SIGTERM and must exit 0."""

    def __init__(self, url: str, side: psycopg.Connection[Any], logs: Path) -> None:
        self.url = url
        self.side = side
        self.logs = logs
        self.procs: list[subprocess.Popen[bytes]] = []
        self.killed: set[int] = set()
        self.codes: dict[int, int] = {}

    def start(
        self,
        count: int = 1,
        *,
        concurrency: int = 1,
        command: list[str] | None = None,
        **env: str,
    ) -> list[int]:
        """Start ``count`` workers and wait until each has registered; return their pids.

        The command is jobs_app's entry point unless ``command`` is given.
        """
        before = self.registered()
        environ = {k: v for k, v in os.environ.items() if not k.startswith(("UOW_", "DATABASE_"))}
        environ |= {
            "DATABASE_URL": self.url,
            "UOW_POOL_SIZE": str(concurrency),
            "UOW_MAX_OVERFLOW": "0",
            "JOBS_STALLED_AFTER": "30",
            **env,
        }
        argv = command or [
            *(sys.executable, "-m", "tests.jobs.jobs_app"),
            *("--concurrency", str(concurrency)),
        ]
        started = []
        for _ in range(count):
            log = (self.logs / f"worker-{len(self.procs)}.log").open("wb")
            proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                argv,
                cwd=ROOT,
                env=environ,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            log.close()
            self.procs.append(proc)
            started.append(proc.pid)
        wait_for(
            lambda: self.registered() >= before + count or self.dead(),
            timeout=60,
            what=f"{count} workers to register",
        )
        assert not self.dead(), f"a worker exited at start:\n{self.output()}"
        return started

    def registered(self) -> int:
        row = self.side.execute("SELECT count(*) FROM procrastinate_workers").fetchone()
        assert row is not None
        return int(row[0])

    def dead(self) -> list[int]:
        return [p.pid for p in self.procs if p.poll() is not None and p.pid not in self.killed]

    def kill(self, pid: int) -> None:
        """SIGKILL: no shutdown, no unregistering, the running job is left ``doing``."""
        self.killed.add(pid)
        os.kill(pid, signal.SIGKILL)
        next(p for p in self.procs if p.pid == pid).wait(timeout=30)

    def terminate(self, pid: int) -> int:
        """SIGTERM, as systemd or docker stop sends: wait for the exit and return its code."""
        proc = next(p for p in self.procs if p.pid == pid)
        proc.send_signal(signal.SIGTERM)
        self.codes[pid] = proc.wait(timeout=30)
        return self.codes[pid]

    def output(self) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}"
            for path in sorted(self.logs.iterdir())
        )

    def stop(self) -> None:
        """SIGTERM to every live worker: each finishes its job and exits 0."""
        live = [p for p in self.procs if p.poll() is None]
        for proc in live:
            proc.send_signal(signal.SIGTERM)
        codes = dict(self.codes)
        for proc in live:
            try:
                codes[proc.pid] = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[proc.pid] = proc.wait()
        failed = {pid: code for pid, code in codes.items() if code != 0}
        crashed = [p.pid for p in self.procs if p.pid not in codes and p.pid not in self.killed]
        assert not failed and not crashed, (
            f"workers did not stop cleanly: {failed}, exited early: {crashed}\n{self.output()}"
        )


@pytest.fixture
def workers(jobs_url: str, side: psycopg.Connection[Any]) -> Iterator[Workers]:
    """Start worker processes on the jobs database; all are stopped (SIGTERM) at the end."""
    with tempfile.TemporaryDirectory(prefix="uow-workers-") as logs:
        made = Workers(jobs_url, side, Path(logs))
        try:
            yield made
        finally:
            made.stop()


def runs(side: psycopg.Connection[Any], key: str) -> int:
    row = side.execute("SELECT count(*) FROM job_runs WHERE key = %s", (key,)).fetchone()
    assert row is not None
    return int(row[0])


def job(side: psycopg.Connection[Any], job_id: int) -> tuple[str, int] | None:
    """(status, attempts) of a job, or None when there is no such job."""
    row = side.execute(
        "SELECT status::text, attempts FROM procrastinate_jobs WHERE id = %s", (job_id,)
    ).fetchone()
    return (row[0], row[1]) if row else None


def succeeded(side: psycopg.Connection[Any], job_id: int, *, timeout: float = 30) -> int:
    """Wait until the job has succeeded; return its attempts (procrastinate counts the
    successful one: 1 for a job that ran once, 2 for one retried once)."""
    wait_for(
        lambda: (job(side, job_id) or ("",))[0] == "succeeded",
        timeout=timeout,
        what=f"job {job_id} to succeed (now {job(side, job_id)})",
    )
    found = job(side, job_id)
    assert found is not None
    return found[1]


# -- transactional semantics, seen by a real worker -----------------------------------------


def test_committed_job_runs_once(tasks: Any, side: Any, workers: Workers) -> None:
    """A job deferred in a unit that commits is run once by a worker, and only once."""
    workers.start(2)
    with uow.UnitOfWork() as unit:
        job_id = unit.defer(tasks.record, key="committed")
    assert succeeded(side, job_id) == 1
    time.sleep(1.0)  # a second worker polling meanwhile must not run it again
    assert runs(side, "committed") == 1


def test_rolled_back_job_never_runs(tasks: Any, side: Any, workers: Workers) -> None:
    """A job deferred in a unit that rolls back leaves no job: no worker ever runs it."""
    workers.start()
    with pytest.raises(RuntimeError, match="refused"), uow.UnitOfWork() as unit:
        rolled_back = unit.defer(tasks.record, key="rolled-back")
        raise RuntimeError("refused")
    with uow.UnitOfWork() as unit:
        after = unit.defer(tasks.record, key="after")
    succeeded(side, after)  # the worker has been through the queue since the rollback
    assert job(side, rolled_back) is None
    assert runs(side, "rolled-back") == 0


def test_job_not_picked_up_before_commit(tasks: Any, side: Any, workers: Workers) -> None:
    """While the unit is open the job is invisible to polling workers; at COMMIT it runs."""
    workers.start(2)
    with uow.UnitOfWork() as unit:
        job_id = unit.defer(tasks.record, key="held")
        time.sleep(2.0)  # four polling intervals of each worker, and their LISTEN
        assert job(side, job_id) is None
        assert runs(side, "held") == 0
    assert succeeded(side, job_id) == 1
    assert runs(side, "held") == 1


def test_async_deferral(tasks: Any, side: Any, jobs_db: uow.Database, workers: Workers) -> None:
    """The same with ``await unit.defer``: invisible until COMMIT, nothing after a rollback."""
    workers.start()

    async def scenario() -> tuple[int, int]:
        with contextlib.suppress(RuntimeError):
            async with uow.AsyncUnitOfWork() as unit:
                rolled_back = await unit.defer(tasks.record, key="async-rolled-back")
                raise RuntimeError("refused")
        async with uow.AsyncUnitOfWork() as unit:
            job_id = await unit.defer(tasks.record, key="async-committed")
            time.sleep(1.5)  # blocks the loop on purpose: the unit stays open, uncommitted
            assert job(side, job_id) is None
        await jobs_db.dispose_async()
        return rolled_back, job_id

    rolled_back, job_id = run(scenario())
    assert succeeded(side, job_id) == 1
    assert runs(side, "async-committed") == 1
    assert job(side, rolled_back) is None
    assert runs(side, "async-rolled-back") == 0


# -- a worker killed mid-job ----------------------------------------------------------------


def in_effect_transaction(side: psycopg.Connection[Any]) -> bool:
    """Whether a worker holds the effect's INSERT uncommitted (idle in its transaction)."""
    row = side.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'"
        " AND query LIKE 'INSERT INTO job_effects%'"
    ).fetchone()
    return bool(row and row[0])


@pytest.mark.parametrize("moment", ["before-commit", "after-commit"])
def test_killed_worker_job_retried_effect_once(
    tasks: Any, side: Any, workers: Workers, moment: str
) -> None:
    """SIGKILL mid-job: the stalled job is retried by another worker; its effect is applied once.

    Before the effect's COMMIT the server rolls it back and the retry does the work; after
    it, the retry's ``INSERT ... ON CONFLICT DO NOTHING`` finds the row and adds nothing.
    """
    workers.start(2, JOBS_STALLED_AFTER=str(STALLED_AFTER))
    hold = {"hold": 60.0} if moment == "before-commit" else {"linger": 60.0}
    with uow.UnitOfWork() as unit:
        job_id = unit.defer(tasks.record, key="crash", **hold)
    if moment == "before-commit":
        wait_for(lambda: in_effect_transaction(side), timeout=30, what="the effect's open INSERT")
        effect_rows_at_kill = 0
    else:
        wait_for(
            lambda: side.execute("SELECT 1 FROM job_effects WHERE key = 'crash'").fetchone(),
            timeout=30,
            what="the effect's COMMIT",
        )
        effect_rows_at_kill = 1
    row = side.execute("SELECT pid FROM job_runs WHERE key = 'crash'").fetchone()
    assert row is not None and job(side, job_id) == ("doing", 0)
    victim = row[0]
    killed_at = time.monotonic()
    workers.kill(victim)
    effect = side.execute("SELECT count(*) FROM job_effects WHERE key = 'crash'").fetchone()
    assert effect == (effect_rows_at_kill,)

    attempts = succeeded(side, job_id, timeout=60)
    recovered = time.monotonic() - killed_at
    assert attempts == 2, "retried once, by procrastinate's retry_job"
    assert runs(side, "crash") == 2
    effects = side.execute("SELECT count(*), min(pid) FROM job_effects WHERE key = 'crash'")
    count, writer = effects.fetchone() or (0, 0)
    assert count == 1
    if moment == "after-commit":
        assert writer == victim, "the retry found the killed run's committed effect"
    else:
        assert writer != victim, "the killed run's uncommitted effect was rolled back"
    print(f"{moment}: killed worker's job succeeded {recovered:.1f} s after SIGKILL")


def test_procrastinate_command(tasks: Any, side: Any, workers: Workers, app_name: str) -> None:
    """``procrastinate --app=<module>.app worker`` runs the jobs, connected as a uow job worker."""
    # The console script, as users run it (``python -m procrastinate`` would be named
    # after procrastinate's __main__.py); a script's sys.path starts at its own directory,
    # so the jobs module must be installed or on PYTHONPATH.
    script = str(Path(sys.executable).with_name("procrastinate"))
    command = [script, "--app=tests.jobs.jobs_app.app", "worker"]
    (pid,) = workers.start(command=command, PYTHONPATH=str(ROOT))
    with uow.UnitOfWork() as unit:
        job_id = unit.defer(tasks.record, key="cli")
    assert succeeded(side, job_id) == 1
    names = worker_connections(side, app_name)
    assert names.get(f"uow-jobs:procrastinate[{pid}]", 0) >= 2, names  # its pool and LISTEN


def test_worker_that_does_not_fit_refuses_to_start(jobs_url: str) -> None:
    """A worker whose connections do not fit in max_connections exits at start, saying why."""
    result = run_python(
        *("-m", "tests.jobs.jobs_app", "--processes", "1000"), DATABASE_URL=jobs_url, timeout=60
    )
    assert result.returncode != 0
    assert "connection budget exceeded" in result.stderr, result.stderr
    assert "1000 job worker processes x (max_size 2 + 1 LISTEN" in result.stderr
    assert "starting" not in result.stdout


def test_sigterm_lets_the_running_job_finish(tasks: Any, side: Any, workers: Workers) -> None:
    """SIGTERM mid-job (systemd's stop, docker stop): the job finishes, the worker exits 0."""
    (pid,) = workers.start()
    with uow.UnitOfWork() as unit:
        job_id = unit.defer(tasks.record, key="graceful", linger=2.0)
    wait_for(lambda: runs(side, "graceful"), timeout=30, what="the job to start")
    assert workers.terminate(pid) == 0
    assert job(side, job_id) == ("succeeded", 1)
    assert runs(side, "graceful") == 1
    assert workers.registered() == 0, "a stopped worker unregisters"


# -- connections: per worker, and 1,000 jobs within the budget -------------------------------


def worker_connections(side: psycopg.Connection[Any], web: str) -> dict[str, int]:
    """The jobs database's connections by application_name, without the web side's and the
    tests' own (conftest's side connection has none)."""
    rows = side.execute(
        "SELECT application_name, count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND application_name NOT IN (%s, %s, '')"
        " GROUP BY 1",
        (web, OBSERVER),
    ).fetchall()
    return {name: int(count) for name, count in rows}


@pytest.mark.parametrize("concurrency", [1, 4])
def test_connections_per_worker(
    tasks: Any, side: Any, workers: Workers, app_name: str, concurrency: int
) -> None:
    """A worker holds its procrastinate pool, one LISTEN connection, and its tasks' uow pool."""
    workers.start(concurrency=concurrency)
    time.sleep(1.0)  # the pool and the listener connect in the background
    idle = worker_connections(side, app_name)
    with uow.UnitOfWork() as unit:
        ids = [unit.defer(tasks.record, key=f"busy-{i}", hold=1.5) for i in range(concurrency)]
    wait_for(
        lambda: side.execute("SELECT count(*) FROM job_runs").fetchone() == (concurrency,),
        timeout=30,
        what=f"{concurrency} jobs running at once",
    )
    busy = worker_connections(side, app_name)
    for job_id in ids:
        succeeded(side, job_id)
    print(f"concurrency {concurrency}: idle {idle}, busy {busy}")
    assert sum(idle.values()) <= per_worker(concurrency)
    # Each running job holds one uow connection, in its transaction.
    assert concurrency + 1 < sum(busy.values()) <= per_worker(concurrency)


class Sampler(threading.Thread):
    """Samples the jobs database's connections every 50 ms and keeps the peak."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.stop = threading.Event()
        self.peak: dict[str, int] = {}
        self.peak_total = 0
        self.samples = 0

    def run(self) -> None:
        with psycopg.connect(
            libpq_dsn(self.url), autocommit=True, application_name=OBSERVER
        ) as conn:
            while not self.stop.wait(0.05):
                rows = conn.execute(
                    "SELECT application_name, count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND application_name NOT IN (%s, '')"
                    " GROUP BY 1",
                    (OBSERVER,),
                ).fetchall()
                total = sum(count for _, count in rows)
                self.samples += 1
                if total > self.peak_total:
                    self.peak_total, self.peak = total, dict(rows)


def test_thousand_jobs_sixteen_threads_four_workers(
    tasks: Any, side: Any, workers: Workers, jobs_url: str, make_database: MakeDatabase
) -> None:
    """1,000 jobs deferred by 16 threads, each with a data row in its unit, run by 4 workers:
    each exactly once, and the server's connections stay within the computed budget."""
    jobs, threads, worker_count = 1000, 16, 4
    web_db = make_database(url=jobs_url, pool_size=8, max_overflow=8)
    budget = 8 + 8 + worker_count * per_worker(1)
    # The workers' own start-up check counts each of them as this arithmetic does.
    as_worker = make_database(url=jobs_url, pool_size=1, max_overflow=0)
    checked = uow.jobs.check_budget(as_worker, processes=worker_count)
    assert checked is not None and checked.per_process == per_worker(1)
    row = side.execute(
        "SELECT current_setting('max_connections')::int"
        " - current_setting('superuser_reserved_connections')::int"
    ).fetchone()
    assert row is not None and budget <= row[0], "the test server is too small for the test"
    workers.start(worker_count)
    sampler = Sampler(jobs_url)
    sampler.start()
    errors: list[BaseException] = []

    def defer_share(thread: int) -> None:
        try:
            for i in range(thread, jobs, threads):
                with uow.UnitOfWork(web_db) as unit:
                    unit.session.execute(
                        text("INSERT INTO job_requests (key, thread) VALUES (:key, :thread)"),
                        {"key": f"job-{i}", "thread": thread},
                    )
                    unit.defer(tasks.record, key=f"job-{i}")
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    started = time.monotonic()
    try:
        deferrers = [threading.Thread(target=defer_share, args=(t,)) for t in range(threads)]
        for thread in deferrers:
            thread.start()
        for thread in deferrers:
            thread.join()
        deferred = time.monotonic() - started
        assert not errors, errors
        wait_for(
            lambda: (
                side.execute(
                    "SELECT count(*) FROM procrastinate_jobs"
                    " WHERE task_name = 'record' AND status = 'succeeded'"
                ).fetchone()
                == (jobs,)
            ),
            timeout=120,
            what=f"{jobs} jobs to succeed",
        )
        done = time.monotonic() - started
    finally:
        sampler.stop.set()
        sampler.join()

    counts = side.execute(
        "SELECT (SELECT count(*) FROM job_requests), (SELECT count(*) FROM job_runs),"
        " (SELECT count(DISTINCT job_id) FROM job_runs), (SELECT count(*) FROM job_effects),"
        " (SELECT count(*) FROM procrastinate_jobs WHERE task_name = 'record'),"
        " (SELECT count(*) FROM procrastinate_jobs WHERE task_name = 'record' AND attempts <> 1),"
        " (SELECT count(DISTINCT pid) FROM job_runs)"
    ).fetchone()
    assert counts == (jobs, jobs, jobs, jobs, jobs, 0, worker_count), (
        "requests, runs, distinct jobs run, effects, jobs, jobs not run exactly once, workers"
    )
    assert sampler.peak_total <= budget, f"over the budget of {budget}: {sampler.peak}"
    missing = side.execute(
        "SELECT count(*) FROM job_requests r LEFT JOIN job_effects e USING (key)"
        " WHERE e.key IS NULL"
    ).fetchone()
    assert missing == (0,)
    print(
        f"{jobs} jobs: deferred by {threads} threads in {deferred:.1f} s, all run by "
        f"{worker_count} workers {done:.1f} s after the first; peak {sampler.peak_total} "
        f"connections (budget {budget}) over {sampler.samples} samples: {sampler.peak}"
    )
