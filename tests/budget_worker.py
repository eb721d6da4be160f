"""A web worker as a server starts one: boot with the budget check, then serve units of work.

Run as ``python -m tests.budget_worker URL APP SECONDS`` by tests/integration/
test_boot_check.py, with no ``WEB_CONCURRENCY`` or ``UOW_PROCESSES``: the check alone must
know how many workers share the server. A worker whose budget does not fit exits non-zero
with uow's message, as a gunicorn worker whose ``post_worker_init`` raises does. One that
boots waits for a line on stdin, runs ``pool_size`` threads of units for SECONDS, and
prints every error it met and its pool's connection counts.
"""

from __future__ import annotations

import sys
import threading
import time

from sqlalchemy import text

import uow


def main() -> int:
    url, app, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    database = uow.configure(url, application_name=app, pool_size=5, max_overflow=0, check=True)
    print("booted", flush=True)
    sys.stdin.readline()  # the test starts every booted worker at once: all pools overlap
    errors: list[str] = []
    deadline = time.monotonic() + seconds

    def serve() -> None:
        while time.monotonic() < deadline:
            try:
                with uow.UnitOfWork() as unit:
                    unit.session.execute(text("SELECT pg_sleep(0.02)"))
            except Exception as exc:  # every error is reported to the test
                errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=serve) for _ in range(database.settings.pool_size)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for error in errors:
        print("error", error, flush=True)
    stats = database.stats()
    # Failed connection attempts count even when a retry hid them from the units.
    print(f"opened {stats.connections_num} failed {stats.connections_errors}", flush=True)
    database.dispose()
    return 1 if errors or stats.connections_errors else 0


if __name__ == "__main__":
    sys.exit(main())
