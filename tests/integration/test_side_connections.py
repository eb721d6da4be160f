"""Over TLS: side connections keep the application's TLS parameters, no connection sends the
password to a fake server in the middle, and the CLI says why it could not connect."""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import URL, make_url

from tests.tls import Interceptor, enable_tls, make_authority, tls_bin_dir
from uow import Settings
from uow.__main__ import main
from uow._ops.doctor import diagnose
from uow._ops.pooler import side_connect_args
from uow.testing import EmbeddedPostgres

INI = Path(__file__).resolve().parents[2] / "alembic.ini"
PASSWORD = "S3cr3t!pw@#"
USER = "victim"


@pytest.fixture(scope="module")
def tls_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[EmbeddedPostgres, Path]]:
    """A throwaway server with TLS on, the CA of its certificate, a role with a password,
    and a database that role may not connect to."""
    authority = make_authority(tmp_path_factory.mktemp("tls"), "good")
    with EmbeddedPostgres(bin_dir=tls_bin_dir(), log_connections=True) as server:
        enable_tls(server, authority)
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN SUPERUSER PASSWORD {}").format(
                    sql.Identifier(USER), PASSWORD
                )
            )
            conn.execute(sql.SQL("CREATE ROLE outsider LOGIN PASSWORD {}").format(PASSWORD))
            conn.execute("CREATE DATABASE locked")
            conn.execute("REVOKE CONNECT ON DATABASE locked FROM PUBLIC")
        yield server, authority.ca


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA that did not sign the server's certificate."""
    return make_authority(tmp_path_factory.mktemp("other"), "other").ca


def cli(*args: str) -> tuple[int, str]:
    """Run `uow ARGS` in-process with no uow variable set; (exit code, stderr)."""
    with pytest.MonkeyPatch.context() as env:
        for name in list(os.environ):
            if name.startswith(("UOW_", "DATABASE_")):
                env.delenv(name)
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(list(args))
    return code, err.getvalue()


COMMANDS = {
    "doctor": ["doctor"],
    "top": ["top", "--iterations", "1"],
    "migrate": ["migrate", "--config", str(INI), "current"],
}


def command(name: str, url: str) -> list[str]:
    """The arguments of CLI command ``name`` against ``url``."""
    head, *rest = COMMANDS[name]
    return [head, "--url", url, *rest]


@pytest.mark.parametrize("name", sorted(COMMANDS))
@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("wrong password", 'password authentication failed for user "victim"'),
        ("other CA", "certificate verify failed"),
        ("no CONNECT", 'permission denied for database "locked"'),
        ("closed port", "Connection refused"),
    ],
)
def test_the_cli_says_why_it_cannot_connect(
    tls_server: tuple[EmbeddedPostgres, Path], other_ca: Path, name: str, case: str, reason: str
) -> None:
    """doctor, top and migrate print libpq's reason (masked URL, no password) and exit 2."""
    server, _ = tls_server
    url = make_url(verify_full_url(server.port, other_ca))
    url = {
        "wrong password": url.set(password="wr0ng-pw", query={}),
        "other CA": url,
        "no CONNECT": url.set(username="outsider", database="locked", query={}),
        "closed port": url.set(port=1, query={}),
    }[case]
    code, err = cli(*command(name, url.render_as_string(hide_password=False)))
    assert code == 2, err
    assert reason in err and "cannot reach" in err and ":***@127.0.0.1:" in err
    assert "wr0ng-pw" not in err and PASSWORD not in err
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_no_connection_sends_the_password_to_a_fake_server(
    tls_server: tuple[EmbeddedPostgres, Path], name: str
) -> None:
    """With verify-full, a fake server that refuses TLS and asks for a cleartext password
    gets none from doctor, top or migrate, which say TLS was required."""
    server, ca = tls_server
    with Interceptor(server.port, relay=0) as fake:
        code, err = cli(*command(name, verify_full_url(fake.port, ca)))
    assert code == 2, err
    assert fake.attacked >= 1 and fake.passwords == []
    assert "SSL" in err, err


def test_replica_probes_send_no_password_to_a_fake_server(
    tls_server: tuple[EmbeddedPostgres, Path],
) -> None:
    """A read replica's URL leading to a fake server: the doctor reports it unreachable, with
    the reason, and the fake server gets no password."""
    server, ca = tls_server
    with Interceptor(server.port, relay=0) as fake:
        settings = Settings(
            url=verify_full_url(server.port, ca), replica_urls=[verify_full_url(fake.port, ca)]
        )
        report = diagnose(settings)
    assert fake.attacked >= 1 and fake.passwords == []
    (replica,) = report.replicas
    assert not replica["reachable"] and "SSL" in replica["error"]


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
        # uow's defaults for what the URL leaves unset, as on the application's connections
        "keepalives": 1,
        "keepalives_idle": 30,
        "keepalives_interval": 10,
        "keepalives_count": 3,
        "tcp_user_timeout": 40000,  # statement_timeout 30 s + 10 s
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
