"""uow.fastapi over real HTTP (uvicorn in a thread) against a real PostgreSQL."""

from __future__ import annotations

import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any

import anyio.to_thread
import psycopg
import pytest
import uvicorn
from fastapi import Depends, FastAPI, Query
from sqlalchemy import text

import uow.fastapi
from tests.conftest import MakeDatabase, connections
from tests.examples.test_api import call, serving
from tests.helpers import wait_for
from uow import AsyncUnitOfWork, Database, UnitOfWork

CLIENTS = 400  # concurrent requests, as in fastapi/fastapi#3205's reports
THREADS = 40  # anyio's default threadpool, which runs FastAPI's sync endpoints

# At module level, where FastAPI resolves string annotations; the units run on the
# database given to the app's lifespan.
Unit = Annotated[UnitOfWork, Depends(uow.fastapi.unit_of_work())]
AsyncUnit = Annotated[AsyncUnitOfWork, Depends(uow.fastapi.unit_of_work(AsyncUnitOfWork))]


def app_on(
    database: Database, *, retry_after: int = uow.fastapi.RETRY_AFTER, check: bool | None = None
) -> FastAPI:
    """An app with uow.fastapi's lifespan and handlers, and endpoints that hold a connection."""
    app = FastAPI(lifespan=uow.fastapi.lifespan(database, check=check))
    uow.fastapi.install_exception_handlers(app, retry_after=retry_after)

    @app.get("/sync")
    def sync_endpoint(unit: Unit) -> int:
        with unit:
            return int(unit.session.execute(text("SELECT 1 FROM pg_sleep(0.01)")).scalar_one())

    @app.get("/async")
    async def async_endpoint(unit: AsyncUnit) -> int:
        async with unit:
            result = await unit.session.execute(text("SELECT 1 FROM pg_sleep(0.01)"))
            return int(result.scalar_one())

    @app.get("/threads")
    async def threads() -> float:
        return anyio.to_thread.current_default_thread_limiter().total_tokens

    @app.get("/sql")
    def run_sql(unit: Unit, q: Annotated[list[str], Query()]) -> None:
        with unit:
            for statement in q:
                unit.session.execute(text(statement))

    @app.get("/slow")
    def slow() -> None:
        with UnitOfWork(database, timeout=0.1) as unit:
            unit.session.execute(text("SELECT pg_sleep(5)"))

    return app


def hammer(url: str) -> Counter[int | str]:
    """Send CLIENTS requests at once from as many threads; count the answers by status."""
    start = threading.Barrier(CLIENTS)

    def one() -> int | str:
        start.wait(timeout=60)
        try:
            with urllib.request.urlopen(url, timeout=120) as response:  # noqa: S310
                return int(response.status)
        except urllib.error.HTTPError as error:
            return error.code
        except OSError as error:  # a refused or timed-out connection: no answer at all
            return type(error).__name__

    with ThreadPoolExecutor(CLIENTS) as clients:
        return Counter(clients.map(lambda _: one(), range(CLIENTS), timeout=180))


@pytest.mark.slow
@pytest.mark.parametrize("endpoint", ["sync", "async"])
def test_400_concurrent_requests_on_40_threads_and_5_connections_all_answer(
    endpoint: str, make_database: MakeDatabase, admin: psycopg.Connection[Any], app_name: str
) -> None:
    """400 requests at once on one worker (40 threads, pool_size=5) all get 200: no deadlock."""
    database = make_database(pool_size=5, max_overflow=0, pool_timeout=60)
    with serving(app_on(database)) as api:
        assert call("GET", f"{api}/threads")[2] == THREADS
        started = time.monotonic()
        answers = hammer(f"{api}/{endpoint}")
        elapsed = time.monotonic() - started
        # Either kind: the startup check's idle sync connection counts in the same budget.
        assert connections(admin, app_name) <= 5
    # 400 x 10 ms on 5 connections is 0.8 s of work; a stuck threadpool waits out
    # pool_timeout (60 s) before any 503.
    assert answers == Counter({200: CLIENTS}), answers
    assert elapsed < 50, f"{CLIENTS} requests took {elapsed:.1f}s"
    # The lifespan closed both pools at shutdown (backends take a moment to exit).
    wait_for(lambda: connections(admin, app_name) == 0, what="the pools' connections to close")


@pytest.fixture
def api(make_database: MakeDatabase) -> Iterator[tuple[str, Database]]:
    """An app on a one-connection pool that gives up after 0.3 s, Retry-After 7; its URL."""
    database = make_database(pool_size=1, max_overflow=0, pool_timeout=0.3)
    with serving(app_on(database, retry_after=7)) as url:
        yield url, database


def test_an_exhausted_pool_answers_503_with_retry_after(api: tuple[str, Database]) -> None:
    """PoolExhausted: 503, Retry-After as configured, a short body that says to retry."""
    url, database = api
    with UnitOfWork(database) as held:  # the pool's only connection, held by this thread
        held.session.execute(text("SELECT 1"))
        status, headers, body = call("GET", f"{url}/sync")
    assert (status, headers["retry-after"]) == (503, "7")
    assert body == {"detail": "the service is overloaded; retry shortly"}


def test_a_lost_connection_answers_503_with_retry_after(api: tuple[str, Database]) -> None:
    """ConnectionLost (the backend terminated mid-request): 503 with Retry-After, not 500."""
    url, _ = api
    kill = urllib.parse.urlencode({"q": "SELECT pg_terminate_backend(pg_backend_pid())"})
    status, headers, body = call("GET", f"{url}/sql?{kill}")
    assert (status, headers["retry-after"]) == (503, "7")
    assert "nothing was saved" in body["detail"]
    assert call("GET", f"{url}/sync")[0] == 200  # the dead connection was not pooled


# A deferred trigger that kills its own backend: the connection dies while COMMIT runs.
DIE_AT_COMMIT = [
    "CREATE TEMP TABLE doomed (x int) ON COMMIT DROP",
    "CREATE FUNCTION pg_temp.die() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
    "PERFORM pg_terminate_backend(pg_backend_pid()); PERFORM pg_sleep(5); RETURN NULL; END $$",
    "CREATE CONSTRAINT TRIGGER die AFTER INSERT ON doomed DEFERRABLE INITIALLY DEFERRED "
    "FOR EACH ROW EXECUTE FUNCTION pg_temp.die()",
    "INSERT INTO doomed VALUES (1)",
]


def test_a_commit_with_unknown_outcome_says_to_retry_with_the_same_key(
    api: tuple[str, Database],
) -> None:
    """CommitOutcomeUnknown: 503 whose body says the outcome is unknown, retry with the key."""
    url, _ = api
    status, headers, body = call(
        "GET", f"{url}/sql?{urllib.parse.urlencode({'q': DIE_AT_COMMIT}, doseq=True)}"
    )
    assert (status, headers["retry-after"]) == (503, "7")
    assert "outcome is unknown" in body["detail"]
    assert "same idempotency key" in body["detail"]


def test_a_statement_timeout_answers_504(api: tuple[str, Database]) -> None:
    """StatementTimeout: 504 without Retry-After; the connection is usable afterwards."""
    url, _ = api
    status, headers, body = call("GET", f"{url}/slow")
    assert status == 504
    assert "retry-after" not in headers
    assert body == {"detail": "the database took too long to answer"}
    assert call("GET", f"{url}/sync")[0] == 200


def test_an_unreachable_server_answers_503(make_database: MakeDatabase) -> None:
    """DatabaseUnavailable (nothing listens on the port): 503 with Retry-After."""
    database = make_database(url="postgresql://nobody@127.0.0.1:1/none", connect_timeout=1)
    with serving(app_on(database, check=False)) as url:
        status, headers, body = call("GET", f"{url}/sync")
    assert (status, headers["retry-after"]) == (503, "1")
    assert body == {"detail": "the database is unavailable; retry later"}


def test_a_configuration_error_answers_500_and_logs_the_fix(
    make_database: MakeDatabase, caplog: pytest.LogCaptureFixture
) -> None:
    """ConfigurationError (a budget that does not fit): 500, short body, the fix in the log."""
    database = make_database(processes=10_000)
    app = app_on(database, check=False)  # the check would stop it from starting
    with caplog.at_level(logging.ERROR, logger="uow.fastapi"), serving(app) as url:
        status, _, body = call("GET", f"{url}/sync")
    assert (status, body) == (500, {"detail": "the service is misconfigured"})
    logged = [r.getMessage() for r in caplog.records if r.name == "uow.fastapi"]
    assert any("GET /sync" in m and "Lower UOW_POOL_SIZE" in m for m in logged), logged


def test_a_budget_that_does_not_fit_stops_the_server_at_startup(
    make_database: MakeDatabase, caplog: pytest.LogCaptureFixture
) -> None:
    """The lifespan's check fails startup: uvicorn never serves, the log gives the numbers."""
    database = make_database(processes=10_000)
    server = uvicorn.Server(
        uvicorn.Config(app_on(database), host="127.0.0.1", port=0, lifespan="on")
    )
    exits: list[object] = []

    def run() -> None:
        try:
            server.run()
        except SystemExit as exit_:  # what makes `uvicorn app:app` exit non-zero
            exits.append(exit_.code)

    with caplog.at_level(logging.CRITICAL, logger="uow.fastapi"):
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        thread.join(timeout=30)
    assert not thread.is_alive(), "uvicorn kept running"
    assert not server.started
    assert exits == [3]  # uvicorn's STARTUP_FAILURE
    logged = [r.getMessage() for r in caplog.records if r.name == "uow.fastapi"]
    assert any(m.startswith("refusing to start: connection budget exceeded") for m in logged)


def test_the_startup_check_follows_check_budget(make_database: MakeDatabase) -> None:
    """With check_budget=False (as behind PgBouncer) the lifespan does not check: it serves."""
    database = make_database(processes=10_000, check_budget=False)
    with serving(app_on(database, check=None)) as url:
        assert call("GET", f"{url}/sync")[0] == 200


def test_bad_options_fail_when_the_dependency_is_declared() -> None:
    """unit_of_work(isolation=...) with a wrong value fails at once, not on each request."""
    with pytest.raises(uow.UsageError, match="isolation"):
        uow.fastapi.unit_of_work(isolation="SOMETIMES")
    with pytest.raises(ValueError, match="retry_after"):
        uow.fastapi.exception_handlers(retry_after=-1)
