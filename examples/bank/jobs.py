"""The bank's jobs: heavy work that runs in worker processes, not in requests.

``python -m examples.bank worker`` runs them (procrastinate's worker, on the database of
``DATABASE_URL``); the services defer them with ``uow.defer(...)`` in their own unit of
work (see :mod:`examples.bank.statements`). Statements are written under
``BANK_STATEMENTS_DIR`` (``./statements`` by default); ``BANK_STATEMENT_PAUSE_MS``
stands for a slow renderer (the storm sets it; 0 by default).
"""

from __future__ import annotations

import os
from pathlib import Path

from procrastinate import JobContext, RetryStrategy

import uow.jobs

__all__ = ["MAX_ATTEMPTS", "STATEMENTS_QUEUE", "app", "render_statement", "statements_dir"]

MAX_ATTEMPTS = 3
"""Retries of a failed rendering (1 s apart) before its request is marked failed."""
STATEMENTS_QUEUE = "statements"

app = uow.jobs.app()


def statements_dir() -> Path:
    """Where statements are written: ``BANK_STATEMENTS_DIR``, or ``./statements``."""
    return Path(os.environ.get("BANK_STATEMENTS_DIR") or "statements").resolve()


def _pause() -> float:
    raw = os.environ.get("BANK_STATEMENT_PAUSE_MS", "").strip()
    return float(raw) / 1000 if raw else 0.0


@app.task(
    name="bank.render_statement",
    queue=STATEMENTS_QUEUE,
    retry=RetryStrategy(max_attempts=MAX_ATTEMPTS, wait=1),
    pass_context=True,
)
def render_statement(context: JobContext, request_id: int) -> None:
    """Render a requested statement to its file; a rerun is harmless (idempotent)."""
    # Imported here: statements imports this module to defer the task.
    from . import statements  # noqa: PLC0415
    from .unit_of_work import BankUnitOfWork  # noqa: PLC0415

    try:
        statements.render(BankUnitOfWork(), request_id, statements_dir(), pause=_pause())
    except Exception:
        assert context.job is not None
        if context.job.attempts >= MAX_ATTEMPTS:  # procrastinate will not retry it again
            statements.mark_failed(BankUnitOfWork(), request_id)
        raise
