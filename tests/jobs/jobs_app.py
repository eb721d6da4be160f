"""The jobs module of tests/jobs/test_workers.py, written as an application writes its own.

Real worker processes run it: ``python -m tests.jobs.jobs_app --concurrency N`` checks the
job workers' connection budget (``uow.jobs.check_budget``), then runs procrastinate's
worker until SIGTERM (graceful: the current job finishes) or SIGKILL (the job is left
``doing``, and `retry_stalled_jobs` puts it back).
The database comes from uow's settings (``DATABASE_URL``, ``UOW_*``), as in production.

The task `record` is idempotent by design: its effect is one row keyed by the job's natural
key, written with ``INSERT ... ON CONFLICT DO NOTHING`` in one transaction. A run killed
before that COMMIT leaves nothing, and its retry does the work; a run killed after it
leaves the row, and its retry inserts nothing. Every attempt also leaves a row in
``job_runs`` (committed first, in a unit of its own), so the tests count executions; both
tables record the worker's process id.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from procrastinate import JobContext
from sqlalchemy import text

import uow
import uow.jobs

# Seconds without a heartbeat after which a worker's running jobs count as stalled:
# procrastinate's 30 s, unless a test that kills workers makes it short.
STALLED_AFTER = float(os.environ.get("JOBS_STALLED_AFTER", "30"))
HEARTBEAT = STALLED_AFTER / 4

app = uow.jobs.app(
    worker_defaults={
        "update_heartbeat_interval": HEARTBEAT,
        "stalled_worker_timeout": STALLED_AFTER,
        # LISTEN/NOTIFY wakes a worker at COMMIT; polling is the fallback when it is off.
        "fetch_job_polling_interval": 0.5,
    }
)


@app.task(name="record", pass_context=True)
def record(context: JobContext, *, key: str, hold: float = 0.0, linger: float = 0.0) -> None:
    """Write the effect of job ``key`` once, whatever the number of attempts.

    On the first attempt only, ``hold`` keeps the effect's transaction open that long
    before COMMIT and ``linger`` keeps the job running that long after it: the windows in
    which the tests kill the worker.
    """
    job = context.job
    first = job.attempts == 0
    with uow.UnitOfWork() as unit:
        unit.session.execute(
            text(
                "INSERT INTO job_runs (job_id, key, attempt, pid)"
                " VALUES (:job_id, :key, :attempt, :pid)"
            ),
            {"job_id": job.id, "key": key, "attempt": job.attempts, "pid": os.getpid()},
        )
    with uow.UnitOfWork() as unit:
        unit.session.execute(
            text(
                "INSERT INTO job_effects (key, job_id, pid) VALUES (:key, :job_id, :pid)"
                " ON CONFLICT (key) DO NOTHING"
            ),
            {"key": key, "job_id": job.id, "pid": os.getpid()},
        )
        if first and hold:
            time.sleep(hold)
    if first and linger:
        time.sleep(linger)


# Every second (croniter's sixth field is seconds); procrastinate suggests every 10 minutes.
@app.periodic(cron="* * * * * *")
@app.task(name="retry_stalled_jobs", queueing_lock="retry_stalled_jobs", pass_context=True)
async def retry_stalled_jobs(context: JobContext, timestamp: int) -> None:
    """procrastinate's recipe: put the running jobs of workers without a heartbeat back."""
    manager = context.app.job_manager
    for job in await manager.get_stalled_jobs(seconds_since_heartbeat=STALLED_AFTER):
        await manager.retry_job(job)


def main(argv: list[str] | None = None) -> None:
    """Run one worker process until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m tests.jobs.jobs_app")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--name", default=None)
    parser.add_argument("--processes", type=int, default=1, help="job workers in all")
    args = parser.parse_args(argv)
    options: dict[str, Any] = {"concurrency": args.concurrency, "name": args.name}
    # procrastinate's pool, its LISTEN connection and the tasks' uow pool, per process: a
    # worker that does not fit in what the server has left fails here, with the numbers.
    uow.jobs.check_budget(processes=args.processes)
    print(f"worker {os.getpid()} starting", flush=True)
    app.run_worker(**options)


if __name__ == "__main__":
    main()
