"""gunicorn's configuration for tests/budget_app.py: check the budget as each worker boots."""

from __future__ import annotations

from typing import Any

import uow


def post_worker_init(worker: Any) -> None:
    """A worker whose pool does not fit raises here: gunicorn stops with exit code 3."""
    uow.configure(check=True)
