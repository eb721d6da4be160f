"""A throwaway PgBouncer in front of a PostgreSQL server, for tests of pooled deployments.

Runs the system's ``pgbouncer`` binary (Debian: ``apt-get install pgbouncer``) in the
foreground, with a private config in a temporary directory, listening on 127.0.0.1 only.
Clients log in with scram-sha-256; the passwords, in ``auth_file``, are also the ones
PgBouncer logs in to the server with.
"""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal, Self

from psycopg.conninfo import make_conninfo

from .._errors import ConfigurationError
from ._processes import _free_port, _server_owner, check_config_value, new_password, psycopg_url

PoolMode = Literal["session", "transaction", "statement"]

_HOST = "127.0.0.1"
_USER = "postgres"
_START_TIMEOUT = 10.0
_INSTALL_HINT = "install it from your distribution (Debian/Ubuntu: apt-get install pgbouncer)"


def _find_binary() -> Path:
    found = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/usr/bin")
    if found is None:
        raise RuntimeError(f"PgBouncer is not installed: {_INSTALL_HINT}")
    return Path(found)


def _ini_line(name: str, value: str | int | float | bool) -> str:
    text = str(int(value)) if isinstance(value, bool) else str(value)
    if not name.isidentifier():
        raise ConfigurationError(
            f"invalid PgBouncer setting name {name!r}: use letters, digits and '_' only"
        )
    return f"{name} = {check_config_value(f'PgBouncer setting {name}', text)}"


def _auth_line(user: str, password: str) -> str:
    check_config_value("PgBouncer user name", user)
    check_config_value(f"the password of PgBouncer user {user!r}", password, secret=True)
    # auth_file lines are "user" "password": a quote would end the field early.
    if not user or not password or '"' in user + password:
        raise ConfigurationError(
            f"PgBouncer user {user!r} or its password is empty or contains a double quote, "
            "which auth_file cannot hold; use another"
        )
    return f'"{user}" "{password}"\n'


def _stop(process: subprocess.Popen[bytes] | None, tmp: Path, pid: int) -> None:
    if os.getpid() != pid:
        return  # a forked child inherits the finalizer, but the process belongs to its parent
    if process is not None and process.poll() is None:
        # SIGINT is PgBouncer's "safe shutdown"; SIGTERM is immediate, which is what we want.
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    shutil.rmtree(tmp, ignore_errors=True)


class PgBouncer:
    """A PgBouncer process pooling connections to one PostgreSQL server.

    Every database name is forwarded to the server (``* = host=... port=...``) as the
    client's user; clients authenticate with scram-sha-256 with the users' passwords,
    which PgBouncer also uses to log in to the server; ``postgres`` is the admin of the
    ``pgbouncer`` console database (``SHOW POOLS``, ``SHOW CONFIG``). The
    process is stopped and its directory deleted on `cleanup`, on garbage collection or at
    interpreter exit. Not thread-safe.

    Attributes:
        host: Always ``"127.0.0.1"``.
        port: The port PgBouncer listens on.
        passwords: Each user's password, which `url_for` and `admin_dsn` carry.
        log_path: PgBouncer's log.
    """

    def __init__(
        self,
        server_port: int,
        *,
        server_host: str = _HOST,
        pool_mode: PoolMode = "transaction",
        default_pool_size: int = 20,
        max_client_conn: int = 1000,
        settings: Mapping[str, str | int | float | bool] | None = None,
        users: Sequence[str] | Mapping[str, str] = (_USER,),
        password: str | None = None,
        base_dir: Path | str | None = None,
    ) -> None:
        """Write the config; `start` starts PgBouncer.

        Args:
            server_port: Port of the PostgreSQL server.
            server_host: Host of the PostgreSQL server.
            pool_mode: PgBouncer's ``pool_mode``.
            default_pool_size: Server connections per database and user pair.
            max_client_conn: Client connections PgBouncer accepts.
            settings: Extra ``[pgbouncer]`` settings, e.g. ``{"max_prepared_statements": 100}``.
            users: Users allowed in, passed on to the server as they are: a mapping of user
                to password, or names that all get ``password``.
            password: The password of the users given by name: the one they have on the
                server (``EmbeddedPostgres.password``); None generates one, which only a
                server that trusts PgBouncer's logins accepts.
            base_dir: Parent of the temporary directory; None uses `tempfile.gettempdir`.

        Raises:
            RuntimeError: PgBouncer is not installed.
            ConfigurationError: A user, password, host or setting cannot be written to
                PgBouncer's files (a line break, NUL or double quote).
        """
        if pool_mode not in ("session", "transaction", "statement"):
            raise ValueError(f"pool_mode must be session, transaction or statement: {pool_mode!r}")
        # Everything written to PgBouncer's files is checked before anything is made.
        shared = new_password() if password is None else password
        self.passwords: dict[str, str] = (
            dict(users) if isinstance(users, Mapping) else dict.fromkeys(users, shared)
        )
        auth = "".join(_auth_line(user, secret) for user, secret in self.passwords.items())
        if not server_host or any(char.isspace() or char in "'\"\\\0" for char in server_host):
            raise ConfigurationError(
                f"server_host {server_host!r} cannot be written to pgbouncer.ini; "
                "use a host name, an address or a socket directory without spaces or quotes"
            )
        for name, value in (settings or {}).items():
            _ini_line(name, value)
        self._binary = _find_binary()
        self.host, self.port = _HOST, _free_port()
        # PgBouncer refuses to run as root: run it as the user that runs embedded servers.
        self._owner = _server_owner(None)
        self._tmp = Path(tempfile.mkdtemp(prefix="uow-pgbouncer-", dir=base_dir))
        self.log_path = self._tmp / "pgbouncer.log"
        self._config = self._tmp / "pgbouncer.ini"
        users_file = self._tmp / "users.txt"
        users_file.touch(mode=0o600)
        users_file.write_text(auth)
        pairs: dict[str, str | int | float | bool] = {
            "listen_addr": self.host,
            "listen_port": self.port,
            "unix_socket_dir": "",  # TCP only: nothing outside the temporary directory
            "auth_type": "scram-sha-256",
            "auth_file": str(users_file),
            "admin_users": _USER,
            "pool_mode": pool_mode,
            "default_pool_size": default_pool_size,
            "max_client_conn": max_client_conn,
            "logfile": str(self.log_path),
            "pidfile": str(self._tmp / "pgbouncer.pid"),
            **(settings or {}),
        }
        lines = [_ini_line(name, value) for name, value in pairs.items()]
        forward = f"* = host={server_host} port={server_port}"
        self._config.write_text("\n".join(["[databases]", forward, "[pgbouncer]", *lines, ""]))
        if self._owner is not None:
            for path in (self._tmp, *self._tmp.iterdir()):
                os.chown(path, *self._owner)
        self._process: subprocess.Popen[bytes] | None = None
        self._finalizer = weakref.finalize(self, _stop, None, self._tmp, os.getpid())

    def __repr__(self) -> str:
        return f"PgBouncer(port={self.port}, config='{self._config}')"

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()

    @property
    def running(self) -> bool:
        """Whether the PgBouncer process is alive."""
        return self._process is not None and self._process.poll() is None

    @property
    def url(self) -> str:
        """SQLAlchemy URL (psycopg 3 driver) of database ``postgres`` through PgBouncer."""
        return self.url_for("postgres")

    def url_for(self, dbname: str, user: str = _USER) -> str:
        """Return the SQLAlchemy URL (psycopg 3 driver, with the password) of ``dbname``
        through PgBouncer, as ``user``."""
        return psycopg_url(user, self.passwords.get(user), self.host, self.port, dbname)

    @property
    def admin_dsn(self) -> str:
        """libpq connection string (with the password) of the ``pgbouncer`` console database."""
        return make_conninfo(
            host=self.host,
            port=self.port,
            user=_USER,
            password=self.passwords.get(_USER),
            dbname="pgbouncer",
        )

    def start(self) -> Self:
        """Start PgBouncer and wait until it accepts connections.

        Raises:
            RuntimeError: PgBouncer exited or did not listen in time (with its log's tail).
        """
        if self.running:
            return self
        if not self._finalizer.alive:
            raise RuntimeError(f"{self!r} was cleaned up; create a new PgBouncer")
        self._finalizer.detach()
        with (self._tmp / "stdout.log").open("ab") as out:
            self._process = subprocess.Popen(  # noqa: S603 (absolute binary path, no shell)
                [str(self._binary), str(self._config)],
                cwd=self._tmp,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                user=self._owner[0] if self._owner else None,
                group=self._owner[1] if self._owner else None,
                extra_groups=[] if self._owner else None,
            )
        self._finalizer = weakref.finalize(self, _stop, self._process, self._tmp, os.getpid())
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"PgBouncer exited with code {self._process.returncode}:\n{self.log_tail()}"
                )
            try:
                socket.create_connection((self.host, self.port), timeout=1).close()
            except OSError:
                time.sleep(0.02)
            else:
                return self
        raise RuntimeError(
            f"PgBouncer did not listen on port {self.port} within "
            f"{_START_TIMEOUT:g} s:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        """Stop PgBouncer (clients lose their connections); `start` starts it again."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            self._process.wait(timeout=10)

    def cleanup(self) -> None:
        """Stop PgBouncer and delete its temporary directory. Idempotent."""
        self._finalizer()

    def log_tail(self, lines: int = 30) -> str:
        """Return the last ``lines`` lines of PgBouncer's output and log."""
        text = ""
        for path in (self._tmp / "stdout.log", self.log_path):
            if path.exists():
                text += path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])
