"""uow.jobs.connector(): procrastinate reaches the server as the application does, by name."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import procrastinate
import psycopg
import psycopg_pool
import pytest
from psycopg import sql
from sqlalchemy import URL, make_url

import uow.jobs
from tests.conftest import MakeDatabase
from tests.tls import enable_tls, make_authority, tls_bin_dir
from uow import ConfigurationError, Database, Settings
from uow.testing import EmbeddedPostgres

PASSWORD = "S3cr3t!pw@#"
USER = "jobs_worker"


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmbeddedPostgres, Path]]:
    """A throwaway server with TLS on, its CA, and a role that logs in with a password."""
    authority = make_authority(tmp_path_factory.mktemp("tls"), "good")
    with EmbeddedPostgres(bin_dir=tls_bin_dir()) as server:
        enable_tls(server, authority)
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(USER), PASSWORD)
            )
        yield server, authority.ca


def tls_url(server: EmbeddedPostgres, ca: Path) -> str:
    """The server's URL as the role with a password, TLS verified against ``ca``."""
    base = make_url(server.url)
    return URL.create(
        "postgresql+psycopg",
        USER,
        PASSWORD,
        base.host,
        base.port,
        base.database,
        query={"sslmode": "verify-full", "sslrootcert": str(ca)},
    ).render_as_string(hide_password=False)


def test_the_url_and_uows_defaults_reach_the_pool() -> None:
    """Hosts, TLS parameters, password, timeouts and keepalives, under a uow-jobs name."""
    settings = Settings(
        url="postgresql://app:pw%40x@db1:5432,db2:5433/bank?sslmode=verify-full&sslrootcert=/ca.pem",
        application_name="uow:bank",
        statement_timeout=20,
    )
    kwargs = uow.jobs.connect_kwargs_for(settings, pid=4242)
    assert {k: kwargs[k] for k in ("host", "port", "user", "password", "dbname")} == {
        "host": "db1,db2",
        "port": "5432,5433",
        "user": "app",
        "password": "pw@x",
        "dbname": "bank",
    }
    assert (kwargs["sslmode"], kwargs["sslrootcert"]) == ("verify-full", "/ca.pem")
    assert kwargs["application_name"] == "uow-jobs:bank[4242]"
    assert kwargs["keepalives"] == 1 and kwargs["tcp_user_timeout"] == 30_000
    assert "-c statement_timeout=20000ms" in kwargs["options"]


@pytest.mark.parametrize(
    ("name", "expected"),
    [("uow", "uow-jobs[7]"), ("uow:bank", "uow-jobs:bank[7]"), ("billing", "uow-jobs:billing[7]")],
)
def test_job_workers_have_a_name_of_their_own(name: str, expected: str) -> None:
    """A job worker's application_name marks its kind, whatever the application's name."""
    settings = Settings(url="postgresql://app@db/bank", application_name=name)
    assert uow.jobs.connect_kwargs_for(settings, pid=7)["application_name"] == expected


def test_over_tls_with_a_password_the_worker_connects_by_its_name(
    tls_server: tuple[EmbeddedPostgres, Path], make_database: MakeDatabase
) -> None:
    """An opened app's connections are TLS, logged in with the URL's password, and named
    uow-jobs:<name>[pid]; a CA that did not sign the server's certificate is refused."""
    server, ca = tls_server
    database = make_database(url=tls_url(server, ca), application_name="uow:bank")
    app = uow.jobs.app(database)

    async def opened() -> list[tuple[Any, ...]]:
        async with app.open_async(), app.connector.pool.connection() as conn:  # type: ignore[attr-defined]
            cursor = await conn.execute(
                "SELECT a.application_name, s.ssl FROM pg_stat_activity a"
                " JOIN pg_stat_ssl s USING (pid) WHERE a.usename = %s ORDER BY 1",
                (USER,),
            )
            return await cursor.fetchall()

    rows = asyncio.run(opened())
    assert rows and set(rows) == {(f"uow-jobs:bank[{os.getpid()}]", True)}


def test_a_wrong_ca_is_refused(
    tls_server: tuple[EmbeddedPostgres, Path],
    make_database: MakeDatabase,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """sslrootcert reaches the worker's connections: another CA's certificate fails."""
    server, _ = tls_server
    other = make_authority(tmp_path, "other").ca
    database = make_database(url=tls_url(server, other))
    # min_size=0: opening waits for no connection; the first one is awaited for 2 s at most.
    app = procrastinate.App(connector=uow.jobs.connector(database, min_size=0, timeout=2))

    async def connect() -> None:
        async with app.open_async(), app.connector.pool.connection():  # type: ignore[attr-defined]
            pass

    with pytest.raises(psycopg_pool.PoolTimeout):
        asyncio.run(connect())
    assert "certificate verify failed" in caplog.text
    assert PASSWORD not in caplog.text


def test_the_default_database_is_looked_up_at_the_first_connection(jobs_db: Database) -> None:
    """Building the app reads no setting; the first connection uses uow.get_database()."""
    app = uow.jobs.app()

    async def name() -> str:
        async with app.open_async(), app.connector.pool.connection() as conn:  # type: ignore[attr-defined]
            row = await (
                await conn.execute("SELECT current_setting('application_name')")
            ).fetchone()
            assert row is not None
            return str(row[0])

    assert asyncio.run(name()).startswith(f"uow-jobs:{jobs_db.settings.application_name}[")


@pytest.mark.parametrize(
    "pool_kwargs",
    [{"min_size": -1}, {"min_size": 3, "max_size": 2}, {"max_size": 0}, {"max_size": "4"}],
)
def test_bad_pool_sizes_are_refused(pool_kwargs: dict[str, Any]) -> None:
    """Sizes are checked when the connector is built, with the rule in the message."""
    with pytest.raises(ConfigurationError, match="0 <= min_size <= max_size"):
        uow.jobs.connector(**pool_kwargs)


def test_connection_parameters_come_from_the_settings() -> None:
    """conninfo= or kwargs= would bypass the settings: refused, saying what to do."""
    with pytest.raises(ConfigurationError, match="come from the database's settings"):
        uow.jobs.connector(conninfo="postgresql://elsewhere/db")
