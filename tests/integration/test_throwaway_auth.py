"""Throwaway servers ask every local user for the password: none is open to the machine."""

from __future__ import annotations

import stat
from collections.abc import Iterator

import psycopg
import pytest

from uow.testing import EmbeddedPostgres


@pytest.fixture(scope="module")
def server() -> Iterator[EmbeddedPostgres]:
    """A throwaway server of its own."""
    with EmbeddedPostgres() as pg:
        yield pg


def test_connections_without_the_password_are_refused(server: EmbeddedPostgres) -> None:
    """Another local account that knows the port (TCP) or the socket cannot log in as the
    superuser without the generated password; the URL and dsn, which carry it, work."""
    for host in ("127.0.0.1", str(server.data_dir.parent)):
        with pytest.raises(psycopg.OperationalError, match="no password supplied"):
            psycopg.connect(host=host, port=server.port, user="postgres", dbname="postgres")
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(
                host=host, port=server.port, user="postgres", password="guess", dbname="postgres"
            )
    with psycopg.connect(server.dsn) as conn:
        assert conn.execute("SELECT current_setting('password_encryption')").fetchone() == (
            "scram-sha-256",
        )
    assert server.password in server.url and len(server.password) >= 32


def test_no_trust_rule_and_a_private_socket_directory(server: EmbeddedPostgres) -> None:
    """pg_hba.conf has no trust rule (replication included) and the socket's directory is 0700."""
    rules = [
        line.split()
        for line in (server.data_dir / "pg_hba.conf").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert rules and {rule[-1] for rule in rules} == {"scram-sha-256"}
    assert any(rule[1] == "replication" for rule in rules)
    mode = stat.S_IMODE(server.data_dir.parent.stat().st_mode)
    assert mode == 0o700


def test_a_bad_password_is_refused_without_being_shown() -> None:
    """A password with a line break is refused, and the message does not show it."""
    with pytest.raises(ValueError, match="password contains a line break or NUL;") as raised:
        EmbeddedPostgres(password="s3cret\nx")
    assert "s3cret" not in str(raised.value)
