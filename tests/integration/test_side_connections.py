"""Side connections (doctor's PgBouncer probe) keep the application's TLS and host parameters."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import URL

from tests.tls import Interceptor, enable_tls, make_authority, tls_bin_dir
from uow import Settings
from uow._doctor import diagnose
from uow._pooler import side_connect_args
from uow.testing import EmbeddedPostgres

PASSWORD = "S3cr3t!pw@#"
USER = "victim"


@pytest.fixture(scope="module")
def tls_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[EmbeddedPostgres, Path]]:
    """A throwaway server with TLS on, the CA of its certificate, and a role with a password."""
    authority = make_authority(tmp_path_factory.mktemp("tls"), "good")
    with EmbeddedPostgres(bin_dir=tls_bin_dir(), log_connections=True) as server:
        enable_tls(server, authority)
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN SUPERUSER PASSWORD {}").format(
                    sql.Identifier(USER), PASSWORD
                )
            )
        yield server, authority.ca


def verify_full_url(port: int, ca: Path) -> str:
    """The victim's URL to 127.0.0.1:port with sslmode=verify-full and the CA."""
    query = {"sslmode": "verify-full", "sslrootcert": str(ca)}
    url = URL.create("postgresql+psycopg", USER, PASSWORD, "127.0.0.1", port, "postgres", query)
    return url.render_as_string(hide_password=False)


def test_pgbouncer_probe_never_sends_the_password_without_tls(
    tls_server: tuple[EmbeddedPostgres, Path],
) -> None:
    """With verify-full, a fake server that relays doctor's connection and then asks for a
    cleartext password on the PgBouncer probe gets nothing: the probe requires TLS too."""
    server, ca = tls_server
    with Interceptor(server.port, relay=1) as fake:
        settings = Settings(url=verify_full_url(fake.port, ca), pgbouncer="session")
        report = diagnose(settings)
    assert fake.attacked == 1, "the probe never reached the fake server"
    assert fake.passwords == []
    assert report.server["version"]  # the relayed connection worked, over TLS
    assert report.pgbouncer["detected"] is None  # the ports differ: something in between


def test_side_connect_args_keep_every_url_parameter() -> None:
    """The probe's parameters are the URL's and connect_args', only the database changed."""
    url = (
        "postgresql://u:p%40w@/app?host=/run/pg,h2&port=5433,5434&sslmode=verify-full"
        "&sslrootcert=/ca.pem&target_session_attrs=read-write&passfile=/pgpass"
    )
    settings = Settings(url=url, engine_options={"connect_args": {"sslcert": "/c.pem"}})
    params = side_connect_args(settings, dbname="pgbouncer")
    assert params == {
        "host": "/run/pg,h2",
        "port": "5433,5434",
        "user": "u",
        "password": "p@w",
        "dbname": "pgbouncer",
        "sslmode": "verify-full",
        "sslrootcert": "/ca.pem",
        "sslcert": "/c.pem",
        "target_session_attrs": "read-write",
        "passfile": "/pgpass",
        "connect_timeout": 3,
        "application_name": settings.application_name,
    }


def test_doctor_on_plain_postgresql_leaves_no_pgbouncer_fatal(
    tls_server: tuple[EmbeddedPostgres, Path],
) -> None:
    """On PostgreSQL itself the doctor does not try PgBouncer's console, so the server log
    gets no 'database "pgbouncer" does not exist' on every run."""
    server, _ = tls_server
    before = server.log_path.stat().st_size
    report = diagnose(Settings(url=server.url))
    assert report.pgbouncer == {"detected": False}
    log = server.log_path.read_bytes()[before:].decode(errors="replace")
    assert "connection authorized" in log  # the doctor's own connection, logged
    assert 'database "pgbouncer" does not exist' not in log
    assert "pgbouncer" not in log
