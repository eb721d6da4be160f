"""The budget checked at boot and once, counting the processes it sees connected."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import event, make_url, text

import uow
from tests.conftest import MakeDatabase, libpq_dsn, run
from uow import AsyncUnitOfWork, ConfigurationError, Database, Settings, UnitOfWork
from uow._default import _swap_default
from uow.testing import EmbeddedPostgres

ROOT = Path(__file__).resolve().parents[2]
REFUSED = ("too many clients", "remaining connection slots")


def _count_connections(database: Database) -> list[int]:
    """[connections opened] on the primary engine, counted from now on."""
    counts = [0]

    def opened(*args: Any) -> None:
        counts[0] += 1  # before uow's connect listener, which may then refuse it

    event.listen(database.engine, "connect", opened, insert=True)
    return counts


def test_failed_check_is_kept_not_repeated_on_every_connection(
    make_database: MakeDatabase,
) -> None:
    """20 units after a failed check: one connection opened, one budget query; all raise."""
    database = make_database(pool_size=5, processes=10_000)
    counts = _count_connections(database)
    for _ in range(20):
        with (
            pytest.raises(ConfigurationError, match="connection budget exceeded"),
            UnitOfWork(database) as unit,
        ):
            unit.session.execute(text("SELECT 1"))
    assert counts == [1]  # and so one budget query: one per new connection at most
    assert database.status().checked_out == 0


def test_async_units_keep_the_failure_too(make_adb: MakeDatabase) -> None:
    """Async units after a failed check: one connection opened on the asyncio pool."""
    database = make_adb(pool_size=5, processes=10_000)
    counts = [0]

    def opened(*args: Any) -> None:
        counts[0] += 1

    event.listen(database.async_engine.sync_engine, "connect", opened, insert=True)

    async def scenario() -> None:
        for _ in range(5):
            with pytest.raises(ConfigurationError, match="connection budget exceeded"):
                async with AsyncUnitOfWork(database) as unit:
                    await unit.session.execute(text("SELECT 1"))

    run(scenario())
    assert counts == [1]


def test_check_and_dispose_forget_a_kept_failure(make_database: MakeDatabase) -> None:
    """db.check() asks the server again; dispose() starts over with a check on connect."""
    database = make_database(pool_size=5, processes=10_000)
    counts = _count_connections(database)
    with pytest.raises(ConfigurationError):
        database.check()
    with pytest.raises(ConfigurationError), UnitOfWork(database) as unit:
        unit.session.execute(text("SELECT 1"))
    with pytest.raises(ConfigurationError):
        database.check()
    assert counts == [2]  # each check() its own connection; the unit none
    database.dispose()
    with pytest.raises(ConfigurationError), UnitOfWork(database) as unit:
        unit.session.execute(text("SELECT 1"))
    assert counts == [3]


def test_passing_boot_check_is_not_repeated_on_connect(
    make_database: MakeDatabase, tmp_path: Path
) -> None:
    """After db.check() passes, new connections make no budget query of their own."""
    database = make_database(pool_size=3, max_overflow=0)
    log = (tmp_path / "trace").open("wb")
    traced: list[Any] = []

    def trace(dbapi_connection: Any, record: Any) -> None:
        # Ahead of uow's own listener, so its budget query would show in the trace.
        traced.append(dbapi_connection.pgconn)
        dbapi_connection.pgconn.trace(log.fileno())

    event.listen(database.engine, "connect", trace, insert=True)
    budget = database.check()
    assert budget.processes == 1
    with database.engine.connect() as a, database.engine.connect() as b:
        a.execute(text("SELECT 1"))
        b.execute(text("SELECT 1"))
    for pgconn in traced:
        pgconn.untrace()
    log.close()
    assert len(traced) == 2
    assert (tmp_path / "trace").read_text().count("max_connections") == 1  # check()'s own


def test_configure_check_refuses_and_keeps_the_previous_default(postgres_url: str) -> None:
    """configure(check=True) raises the budget error at boot; the default is unchanged."""
    previous = Database(Settings(url=postgres_url))
    _swap_default(previous)
    try:
        with pytest.raises(ConfigurationError, match="10000 processes x"):
            uow.configure(postgres_url, processes=10_000, check=True)
        assert uow.get_database() is previous
        database = uow.configure(postgres_url, pool_size=2, check=True)
        assert uow.get_database() is database
    finally:
        _swap_default(None).dispose()  # type: ignore[union-attr]
        previous.dispose()


def test_uow_names_carry_the_pid_and_user_names_do_not(
    make_database: MakeDatabase, admin: psycopg.Connection[Any], postgres_url: str
) -> None:
    """uow:<name> is sent as uow:<name>[pid]; a name of the user's own, or in the URL, as is."""
    app = f"uow:test-{uuid.uuid4().hex[:8]}"
    own = f"mine-{uuid.uuid4().hex[:8]}"
    in_url = f"uow:url-{uuid.uuid4().hex[:8]}"
    for name in (app, own):
        with UnitOfWork(make_database(application_name=name)) as unit:
            unit.session.execute(text("SELECT 1"))
    with Database(Settings(url=f"{postgres_url}?application_name={in_url}")) as database:
        with UnitOfWork(database) as unit:
            unit.session.execute(text("SELECT 1"))
        names_while_open = {
            row[0]
            for row in admin.execute(
                "SELECT application_name FROM pg_stat_activity WHERE application_name LIKE %s",
                (f"{in_url}%",),
            )
        }
    assert names_while_open == {in_url}
    names = {
        row[0]
        for row in admin.execute(
            "SELECT application_name FROM pg_stat_activity WHERE application_name IN (%s, %s)",
            (f"{app}[{os.getpid()}]", own),
        )
    }
    assert names == {f"{app}[{os.getpid()}]", own}


def test_check_counts_the_processes_of_the_application_it_sees(
    make_database: MakeDatabase, postgres_url: str
) -> None:
    """Two other processes' connections (by name) make the budget 3 processes, not 1."""
    app = f"uow:test-{uuid.uuid4().hex[:8]}"
    others = [
        psycopg.connect(libpq_dsn(postgres_url), application_name=f"{app}[{pid}]")
        for pid in (1, 2, 2)  # process 2 has two connections: still one process
    ]
    try:
        budget = make_database(application_name=app, pool_size=2).check()
    finally:
        for conn in others:
            conn.close()
    assert (budget.configured, budget.connected, budget.processes) == (1, 3, 3)
    assert budget.needed == 6


@pytest.fixture
def web_url() -> Iterator[str]:
    """A throwaway server with 47 slots for the role ``web`` (no superuser), and its URL."""
    # 50 - 3 superuser_reserved_connections = 47 slots, for a role that is no superuser
    # (a superuser may take the reserved ones too).
    with EmbeddedPostgres(max_connections=50) as server:
        password = uuid.uuid4().hex
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE ROLE web LOGIN PASSWORD {}").format(password))
        url = make_url(server.url).set(username="web", password=password)
        yield url.render_as_string(hide_password=False)


def _environ() -> dict[str, str]:
    """This process's environment without WEB_CONCURRENCY, DATABASE_URL and UOW_*."""
    unset = ("WEB_CONCURRENCY", "DATABASE_URL")
    return {k: v for k, v in os.environ.items() if k not in unset and not k.startswith("UOW_")}


def test_ten_workers_without_web_concurrency_never_overflow_the_server(web_url: str) -> None:
    """10 workers x pool 5 against 47 slots: those that do not fit refuse to boot, loudly."""
    app = f"uow:boot-{uuid.uuid4().hex[:8]}"
    workers = [
        subprocess.Popen(  # noqa: S603 - this interpreter, this repository's module
            [sys.executable, "-m", "tests.budget_worker", web_url, app, "3"],
            cwd=ROOT,
            env=_environ(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(10)
    ]
    booted = [w for w in workers if w.stdout and w.stdout.readline() == "booted\n"]
    for worker in booted:
        assert worker.stdin
        worker.stdin.write("go\n")
        worker.stdin.flush()
    outcomes = [(w, *w.communicate(timeout=120)) for w in workers]
    for _, out, err in outcomes:
        assert not any(words in out + err for words in REFUSED), out + err
    assert all(w.returncode == 0 for w in booted), outcomes
    assert len(booted) * 5 <= 47
    refused = [outcome for outcome in outcomes if outcome[0] not in booted]
    assert refused, "10 x 5 = 50 connections cannot all fit in 47 slots"
    for w, _, err in refused:
        assert w.returncode != 0
        assert "connection budget exceeded" in err
        assert "processes of this application are connected" in err


@pytest.mark.parametrize("server", ["gunicorn", "uvicorn"])
def test_web_server_whose_workers_do_not_fit_stops_with_the_message(
    web_url: str, server: str
) -> None:
    """gunicorn -w 10 / uvicorn --workers 10, pool 5, 47 slots: the server stops, saying why."""
    bin_dir = Path(sys.executable).parent
    command = {
        "gunicorn": [
            bin_dir / "gunicorn",
            *("-w", "10", "-c", "tests/budget_gunicorn.py", "-b", "127.0.0.1:0"),
            "tests.budget_app:wsgi",
        ],
        "uvicorn": [
            bin_dir / "uvicorn",
            *("--workers", "10", "--port", "0", "tests.budget_app:app"),
        ],
    }[server]
    variables = {
        "DATABASE_URL": web_url,
        "UOW_POOL_SIZE": "5",
        "UOW_MAX_OVERFLOW": "0",
        "UOW_APPLICATION_NAME": f"uow:{server}",
    }
    result = subprocess.run(  # noqa: S603 - the servers installed with this interpreter
        command,
        cwd=ROOT,
        env={**_environ(), **variables},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert "connection budget exceeded" in result.stderr
    assert "x (pool_size + max_overflow = 5)" in result.stderr
    assert not any(words in result.stderr for words in REFUSED), result.stderr
    if server == "gunicorn":
        # gunicorn's "Worker failed to boot." is exit 3, or 1 when the arbiter is halted
        # while it is still spawning the other workers: either way, not 0.
        assert result.returncode != 0, result.stderr
    else:
        # uvicorn stops every worker when one fails to start, but its parent exits 0.
        assert "failed to start, stopping the parent process" in result.stderr
