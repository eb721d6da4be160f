"""The smallest web app that checks uow's connection budget when each worker boots.

tests/integration/test_boot_servers.py serves it with ``uvicorn --workers`` (``app``, a
lifespan) and gunicorn (``wsgi``, with tests/budget_gunicorn.py's ``post_worker_init``),
configured from the environment (``DATABASE_URL``, ``UOW_*``), as docs/guide/deployment.md
shows.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from sqlalchemy import text

import uow


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Check the budget before serving: a worker that does not fit fails to start."""
    database = uow.configure(check=True)
    yield
    database.dispose()


app = FastAPI(lifespan=lifespan)


@app.get("/")
def one() -> int:
    """One unit of work."""
    with uow.UnitOfWork() as unit:
        return int(unit.session.execute(text("SELECT 1")).scalar_one())


def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The same endpoint for gunicorn's sync workers."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(one()).encode()]
