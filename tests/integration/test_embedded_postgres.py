"""EmbeddedPostgres against real PostgreSQL servers: start, settings, restarts, crashes, cleanup."""

import gc
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Literal

import psycopg
import pytest
from sqlalchemy import create_engine, make_url, text

from uow.testing import EmbeddedPostgres

DEBIAN_PG15_BIN = Path("/usr/lib/postgresql/15/bin")
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def accepts_connections(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def run_python(code: str) -> str:
    """Run ``code`` in a fresh interpreter and return its stdout."""
    result = subprocess.run(  # noqa: S603 (our own interpreter and code)
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def scalar(dsn: str, query: str) -> Any:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(query).fetchone()
        assert row is not None
        return row[0]


def test_start_serves_queries_on_the_url_port() -> None:
    """start() returns a server reachable via url/dsn on 127.0.0.1 and via the unix socket."""
    with EmbeddedPostgres() as pg:
        assert pg.running
        url = make_url(pg.url)
        assert (url.drivername, url.host, url.port) == ("postgresql+psycopg", "127.0.0.1", pg.port)
        dsn = f"host=127.0.0.1 port={url.port} user=postgres password={pg.password} dbname=postgres"
        assert scalar(dsn, "SELECT 1") == 1
        assert scalar(pg.dsn, "SHOW listen_addresses") == "127.0.0.1"
        assert scalar(pg.dsn, "SHOW server_encoding") == "UTF8"
        socket_dsn = f"host={pg.data_dir.parent} port={pg.port} user=postgres dbname=postgres"
        socket_dsn += f" password={pg.password}"
        assert scalar(socket_dsn, "SELECT inet_server_addr()") is None  # None: a unix socket
        engine = create_engine(pg.url)
        try:
            with engine.connect() as conn:
                assert conn.scalar(text("SELECT current_user")) == "postgres"
        finally:
            engine.dispose()


def test_max_connections_settings_and_log_connections_are_applied() -> None:
    """max_connections, extra settings (quoted, bool, float; overriding defaults) take effect."""
    settings: dict[str, str | int | float | bool] = {
        "work_mem": "7MB",
        "application_name": "it's a \\ test",
        "log_lock_waits": True,
        "random_page_cost": 1.5,
        "shared_buffers": "16MB",  # overrides the default 32MB
    }
    with EmbeddedPostgres(max_connections=23, settings=settings, log_connections=True) as pg:
        assert scalar(pg.dsn, "SHOW max_connections") == "23"
        assert scalar(pg.dsn, "SHOW work_mem") == "7MB"
        assert scalar(pg.dsn, "SHOW application_name") == "it's a \\ test"
        assert scalar(pg.dsn, "SHOW log_lock_waits") == "on"
        assert scalar(pg.dsn, "SHOW random_page_cost") == "1.5"
        assert scalar(pg.dsn, "SHOW shared_buffers") == "16MB"
        assert scalar(pg.dsn, "SHOW fsync") == "off"
        assert "connection received: host=127.0.0.1" in pg.log_tail()


def test_restart_keeps_data_and_port() -> None:
    """restart() drops connections, keeps committed data and comes back on the same port."""
    with EmbeddedPostgres() as pg:
        port = pg.port
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (x int)")
            conn.execute("INSERT INTO kept VALUES (42)")
            pg.restart(down_for=0.2)
            with pytest.raises(psycopg.OperationalError):
                conn.execute("SELECT 1")
        assert pg.port == port
        assert pg.running
        assert scalar(pg.dsn, "SELECT x FROM kept") == 42


def test_kill_then_start_recovers() -> None:
    """kill() crashes the server; start() runs crash recovery and keeps synchronous commits."""
    with EmbeddedPostgres(settings={"synchronous_commit": True}) as pg:
        port = pg.port
        conn = psycopg.connect(pg.dsn, autocommit=True)
        try:
            conn.execute("CREATE TABLE survivor (x int)")
            conn.execute("INSERT INTO survivor VALUES (7)")
            pg.kill()
            assert not pg.running
            assert not accepts_connections(port)
            with pytest.raises(psycopg.OperationalError):
                conn.execute("SELECT 1")
        finally:
            conn.close()
        with pytest.raises(RuntimeError, match="not running"):
            pg.kill()
        pg.start()
        assert pg.port == port
        assert "automatic recovery in progress" in pg.log_tail()
        assert scalar(pg.dsn, "SELECT x FROM survivor") == 7


def test_stop_modes_and_running() -> None:
    """stop() works in every mode, is a no-op when stopped, and start() comes back after it."""
    with EmbeddedPostgres() as pg:
        modes: tuple[Literal["immediate", "smart", "fast"], ...] = ("immediate", "smart", "fast")
        for mode in modes:
            pg.stop(mode)
            assert not pg.running
            assert not accepts_connections(pg.port)
            pg.stop(mode)
            pg.start()
            assert scalar(pg.dsn, "SELECT 1") == 1


def test_cleanup_removes_the_directory_and_is_idempotent() -> None:
    """cleanup() stops the server, deletes its directory, can be repeated; start() then fails."""
    pg = EmbeddedPostgres().start()
    directory = pg.data_dir.parent
    assert pg.data_dir.is_dir()
    pg.cleanup()
    assert not directory.exists()
    assert not pg.running
    assert not accepts_connections(pg.port)
    pg.cleanup()
    with pytest.raises(RuntimeError, match="cleaned up"):
        pg.start()


def test_garbage_collection_cleans_up() -> None:
    """Dropping the last reference to a running instance stops it and deletes its directory."""
    pg = EmbeddedPostgres().start()
    directory, port = pg.data_dir.parent, pg.port
    del pg
    gc.collect()
    assert not directory.exists()
    assert not accepts_connections(port)


def test_interpreter_exit_without_cleanup_stops_the_server() -> None:
    """A process that exits without cleanup() leaves no server and no directory behind."""
    out = run_python(
        """
        from uow.testing import EmbeddedPostgres
        pg = EmbeddedPostgres().start()
        print(pg.port, pg.data_dir.parent)
        """
    )
    port, directory = out.split()
    assert not Path(directory).exists()
    assert not accepts_connections(int(port))


def test_two_instances_run_side_by_side() -> None:
    """Two clusters run at once on different ports with separate data."""
    with EmbeddedPostgres() as first, EmbeddedPostgres() as second:
        assert first.port != second.port
        with psycopg.connect(first.dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE only_in_first (x int)")
        assert scalar(first.dsn, "SELECT to_regclass('only_in_first')::text") == "only_in_first"
        assert scalar(second.dsn, "SELECT to_regclass('only_in_first')") is None


def test_bin_dir_runs_another_major_version() -> None:
    """bin_dir= runs another installation: Debian's PostgreSQL 15 next to the bundled 18."""
    with EmbeddedPostgres(bin_dir=DEBIAN_PG15_BIN) as old, EmbeddedPostgres() as bundled:
        assert old.bin_dir == DEBIAN_PG15_BIN
        assert old.server_version() // 10000 == 15
        assert bundled.server_version() // 10000 == 18
        assert scalar(old.dsn, "SHOW max_connections") == "100"


def test_create_database_returns_its_url() -> None:
    """create_database() quotes the name and returns a working SQLAlchemy URL for it."""
    with EmbeddedPostgres() as pg:
        url = pg.create_database('Mixed "Case" db')
        assert url == pg.url_for('Mixed "Case" db')
        engine = create_engine(url)
        try:
            with engine.connect() as conn:
                assert conn.scalar(text("SELECT current_database()")) == 'Mixed "Case" db'
        finally:
            engine.dispose()


def test_start_failure_raises_with_the_server_log() -> None:
    """A server that cannot start raises RuntimeError naming the command, code and log lines."""
    pg = EmbeddedPostgres(settings={"shared_buffers": "lots"})
    try:
        with pytest.raises(RuntimeError) as failure:
            pg.start()
        message = str(failure.value)
        assert "pg_ctl" in message
        assert "exited with code 1" in message
        assert 'invalid value for parameter "shared_buffers": "lots"' in message
        assert not pg.running
    finally:
        pg.cleanup()


def test_port_taken_before_start_moves_unless_given() -> None:
    """A picked port taken by another process is replaced; an explicit port fails clearly."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        taken = blocker.getsockname()[1]
        picked = EmbeddedPostgres()
        picked.port = taken  # as if another process bound the port between pick and start
        with picked:
            assert picked.port != taken
            assert scalar(picked.dsn, "SELECT 1") == 1
        explicit = EmbeddedPostgres(port=taken)
        try:
            with pytest.raises(RuntimeError, match="Address already in use"):
                explicit.start()
            assert explicit.port == taken
        finally:
            explicit.cleanup()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_connections": 0}, "max_connections must be at least 1, got 0"),
        ({"port": 70000}, "port must be between 1 and 65535, got 70000"),
        ({"settings": {"port": 5433}}, "settings may not set port"),
        ({"settings": {"work mem": "1MB"}}, "invalid setting name 'work mem'"),
        ({"settings": {"application_name": "a\nb"}}, "contains a line break"),
        ({"settings": {"application_name": "a\0b"}}, "contains a line break or NUL"),
        ({"password": "pw\nlisten_addresses = '*'"}, "password contains a line break or NUL;"),
        ({"password": ""}, "password is empty"),
        ({"bin_dir": "/nonexistent"}, "has no initdb, pg_ctl, postgres"),
    ],
)
def test_invalid_arguments_are_rejected_eagerly(kwargs: dict[str, Any], message: str) -> None:
    """Bad arguments raise ValueError from the constructor, before any directory is made."""
    with pytest.raises(ValueError, match=message):
        EmbeddedPostgres(**kwargs)
