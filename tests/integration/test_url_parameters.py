"""libpq's URL is the user's: what the server got, through every way uow connects."""

from __future__ import annotations

import asyncio
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import Connection, make_url, text

import uow.migrations
from tests.conftest import libpq_dsn
from uow import AsyncUnitOfWork, Database, Settings, UnitOfWork
from uow._ops.doctor import diagnose, render

INI = Path(__file__).resolve().parents[2] / "alembic.ini"


def with_query(url: str, **query: str) -> str:
    """The URL with these libpq parameters added to its query."""
    return make_url(url).update_query_dict(query).render_as_string(hide_password=False)


def user_url(url: str, name: str) -> str:
    """The URL with every parameter of the issue set by the user."""
    return with_query(
        url,
        options=r"-c search_path=tenant_a,public -c statement_timeout=4s",
        application_name=name,
        connect_timeout="3",
        keepalives_idle="7",
    )


def seen(connection: Connection, info: Any) -> dict[str, Any]:
    """What the server and libpq say this connection got."""

    def show(name: str) -> Any:
        return connection.execute(text(f"SHOW {name}")).scalar()

    parameters = info.get_parameters()
    return {
        "search_path": show("search_path"),
        "application_name": show("application_name"),
        "statement_timeout": show("statement_timeout"),
        "lock_timeout": show("lock_timeout"),
        "connect_timeout": parameters.get("connect_timeout"),
        "keepalives_idle": parameters.get("keepalives_idle"),
    }


def expected(name: str) -> dict[str, Any]:
    return {
        "search_path": "tenant_a,public",
        "application_name": name,
        "statement_timeout": "4s",
        "lock_timeout": "10s",  # uow's own, alongside the user's
        "connect_timeout": "3",
        "keepalives_idle": "7",
    }


def test_unit_of_work_connections_keep_the_urls_parameters(postgres_url: str) -> None:
    """options -c, application_name, connect_timeout and keepalives_idle reach the server."""
    name = f"uow-url-{uuid.uuid4().hex[:8]}"
    with Database(Settings(url=user_url(postgres_url, name))) as db, UnitOfWork(db) as unit:
        connection = unit.session.connection()
        raw = connection.connection.dbapi_connection
        assert raw is not None
        assert seen(connection, raw.info) == expected(name)
        assert (db.settings.statement_timeout, db.settings.application_name) == (4.0, name)


def test_async_unit_of_work_connections_keep_the_urls_parameters(postgres_url: str) -> None:
    """The asyncio engine's connections get the same merged parameters."""
    name = f"uow-url-{uuid.uuid4().hex[:8]}"

    async def scenario(db: Database) -> dict[str, Any]:
        try:
            async with AsyncUnitOfWork(db) as unit:
                connection = await unit.session.connection()
                raw = await connection.get_raw_connection()
                info = raw.driver_connection.info  # type: ignore[union-attr]
                return await connection.run_sync(lambda c: seen(c, info))
        finally:
            await db.dispose_async()

    with Database(Settings(url=user_url(postgres_url, name))) as db:
        assert asyncio.run(scenario(db)) == expected(name)


def test_unit_timeout_and_pgbouncer_mode_agree_with_the_urls_timeout(postgres_url: str) -> None:
    """A timeout set in the URL is uow's view of it: SET LOCAL (PgBouncer mode) keeps it."""
    url = with_query(postgres_url, options="-c statement_timeout=1500")
    with Database(Settings(url=url, pgbouncer="transaction")) as db, UnitOfWork(db) as unit:
        assert unit.session.execute(text("SHOW statement_timeout")).scalar() == "1500ms"
    with Database(Settings(url=url)) as db:
        with UnitOfWork(db, timeout=0.25) as unit:
            assert unit.session.execute(text("SHOW statement_timeout")).scalar() == "250ms"
        with UnitOfWork(db) as unit:
            assert unit.session.execute(text("SHOW statement_timeout")).scalar() == "1500ms"


@pytest.fixture
def empty_database(postgres_url: str, admin: psycopg.Connection[Any]) -> Iterator[str]:
    """A new database with an empty schema tenant_a; dropped afterwards."""
    name = f"uow_url_{uuid.uuid4().hex[:10]}"
    admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    try:
        with psycopg.connect(libpq_dsn(url), autocommit=True) as conn:
            conn.execute("CREATE SCHEMA tenant_a")
        yield url
    finally:
        admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def test_migrations_keep_the_urls_parameters(empty_database: str) -> None:
    """alembic through uow.migrations creates its tables in the URL's search_path."""
    url = with_query(empty_database, options="-c search_path=tenant_a")
    uow.migrations.upgrade(url, "head", config=INI)
    with psycopg.connect(libpq_dsn(empty_database)) as conn:
        rows = conn.execute("SELECT DISTINCT schemaname FROM pg_tables WHERE tablename='accounts'")
        assert rows.fetchall() == [("tenant_a",)]


def test_migration_engine_fills_only_what_the_url_leaves_unset(postgres_url: str) -> None:
    """uow-migrations and lock_timeout 5 s are defaults: the URL's values win over them."""

    def show(url: str, **kwargs: Any) -> tuple[Any, ...]:
        engine = uow.migrations.engine(Settings(url=url), **kwargs)
        try:
            with engine.connect() as c:
                names = ("application_name", "lock_timeout", "statement_timeout", "search_path")
                raw = c.connection.dbapi_connection
                assert raw is not None
                libpq = raw.info.get_parameters()
                return (
                    *(c.execute(text(f"SHOW {n}")).scalar() for n in names),
                    libpq["connect_timeout"],
                    libpq["keepalives_idle"],
                )
        finally:
            engine.dispose()

    server_default = show(postgres_url)[2]
    defaults = ("uow-migrations", "5s", server_default, '"$user", public', "5", "30")
    assert show(postgres_url) == defaults
    url = with_query(
        postgres_url,
        application_name="deploy",
        options="-c lock_timeout=2s -c statement_timeout=9s -c search_path=tenant_a",
        connect_timeout="3",
        keepalives_idle="7",
    )
    assert show(url) == ("deploy", "2s", "9s", "tenant_a", "3", "7")
    with pytest.raises(uow.ConfigurationError, match="lock_timeout is set twice"):
        show(url, lock_timeout=1.0)


def closed_port() -> int:
    """A TCP port on 127.0.0.1 where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def multi_host_urls(postgres_url: str) -> list[str]:
    """The session's server behind a closed port, in each of libpq's multi-host forms."""
    url = make_url(postgres_url)
    dead, port = closed_port(), url.port
    base = url._replace(host=None, port=None).render_as_string(hide_password=False)
    netloc = base.replace("@/", f"@127.0.0.1:{dead},127.0.0.1:{port}/", 1)
    return [
        netloc,
        with_query(base, host="127.0.0.1,127.0.0.1", port=f"{dead},{port}"),
        make_url(base)
        .update_query_pairs([("host", f"127.0.0.1:{dead}"), ("host", f"127.0.0.1:{port}")])
        .render_as_string(hide_password=False),
    ]


@pytest.fixture
def default_host_trap(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A unix socket where libpq's default host (PGHOST) now points; nothing may connect."""
    with tempfile.TemporaryDirectory() as directory:
        trap = socket.socket(socket.AF_UNIX)
        trap.bind(f"{directory}/.s.PGSQL.5432")
        trap.listen(8)
        trap.setblocking(False)
        monkeypatch.setenv("PGHOST", directory)
        monkeypatch.setenv("PGPORT", "5432")
        try:
            yield trap
        finally:
            trap.close()


def test_every_multi_host_form_works_end_to_end(
    postgres_url: str, default_host_trap: socket.socket
) -> None:
    """Units, the budget check and doctor work with each form; libpq's default is never used."""
    port = str(make_url(postgres_url).port)
    for url in multi_host_urls(postgres_url):
        settings = Settings(url=url)
        with Database(settings) as db:
            with UnitOfWork(db) as unit:
                assert unit.session.execute(text("SELECT inet_server_port()")).scalar() == int(port)
            assert db.check().max_connections > 0
        report = diagnose(settings)
        assert [(h["port"], h["reachable"], h["connected"]) for h in report.hosts][1] == (
            port,
            True,
            True,
        )
        assert report.hosts[0]["reachable"] is False
        assert "host_unreachable" in {w.code for w in report.warnings}
        assert "Hosts (in the order libpq tries them)" in render(report)
        with pytest.raises(BlockingIOError):
            default_host_trap.accept()  # nothing connected to libpq's default host
