"""pytest plugin that run.py loads into SQLAlchemy's own test run (``-p uow_pool_swap``).

With ``UOW_SWAP_POOLS=1`` it puts uow's pools where SQLAlchemy's tests and dialects look
up the default pool classes: ``FairQueuePool`` for ``QueuePool`` and ``AsyncQueuePool``
for ``AsyncAdaptedQueuePool``. test_pool.py builds its pools as ``pool.QueuePool(...)``
and dialects read ``sqlalchemy.pool.QueuePool`` when an engine is created, so replacing
the package attributes reaches every use. Without the variable nothing is swapped (the
stock run). Either way each test's outcome is written as JSON to the file named by
``UOW_OUTCOMES``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

SWAPPED = os.environ.get("UOW_SWAP_POOLS") == "1"

# One pytest session per process: node id -> "passed" | "failed" | "skipped".
_outcomes: dict[str, str] = {}


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """Swap the pool classes before the test modules are imported (at collection)."""
    if not SWAPPED:
        return
    # Imported here, not at the top: SQLAlchemy's plugin bootstraps before the library loads.
    import sqlalchemy  # noqa: PLC0415
    import sqlalchemy.pool  # noqa: PLC0415

    from uow._engine.pool import AsyncQueuePool, FairQueuePool  # noqa: PLC0415

    for namespace in (sqlalchemy, sqlalchemy.pool):
        namespace.QueuePool = FairQueuePool  # type: ignore[misc]
        namespace.AsyncAdaptedQueuePool = AsyncQueuePool  # type: ignore[misc]


def pytest_report_header() -> str:
    """Say in the run's header which pools are under test."""
    if SWAPPED:
        return "uow: QueuePool -> uow FairQueuePool, AsyncAdaptedQueuePool -> uow AsyncQueuePool"
    return "uow: SQLAlchemy's stock pools"


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Keep each test's worst phase: a failed teardown fails a test that passed."""
    seen = _outcomes.get(report.nodeid)
    if report.failed or seen is None or (seen == "passed" and report.skipped):
        _outcomes[report.nodeid] = report.outcome


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Write the outcomes for run.py to compare."""
    target = os.environ.get("UOW_OUTCOMES")
    if target:
        Path(target).write_text(json.dumps(_outcomes, indent=1, sort_keys=True))
