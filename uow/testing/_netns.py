"""A throwaway PostgreSQL behind a network namespace: black holes and stopped servers on demand.

:class:`NamespacedPostgres` is an :class:`~uow.testing.EmbeddedPostgres` whose server runs
in a network namespace of its own, joined to this one by a veth pair on a random /30 in
10.200.0.0/16; clients connect to the namespace's address. Two faults no proxy can fake:

- :meth:`~NamespacedPostgres.black_hole`: every packet in or out of the namespace is
  dropped (iptables DROP inside it), as when a host vanishes or a firewall eats a flow;
  connections neither close nor error, and unacknowledged data stays unacknowledged.
- :meth:`~NamespacedPostgres.freeze`: SIGSTOP to the postmaster and each of its
  children; the kernel still accepts connections and acknowledges data, but nothing
  answers.

Each returns a context manager that heals the fault on exit. Linux only; needs root
(``ip netns``, ``iptables``). :meth:`cleanup` stops the server and deletes the namespace
and the veth pair, also on garbage collection and at interpreter exit.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import random
import shutil
import signal
import subprocess
import threading
import uuid
import weakref
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Self

from ._postgres import EmbeddedPostgres
from ._processes import Setting, _postmaster_pid

__all__ = ["NamespacedPostgres"]

_CLONE_NEWNET = 0x40000000
_TOOLS = ("ip", "iptables")


def _run(*args: str) -> str:
    result = subprocess.run(args, capture_output=True, text=True, check=False)  # noqa: S603
    if result.returncode != 0:
        raise RuntimeError(f"`{' '.join(args)}` exited with {result.returncode}: {result.stderr}")
    return result.stdout


def _free_subnet() -> ipaddress.IPv4Network:
    """A /30 in 10.200.0.0/16 that no interface here uses (random, so parallel runs differ)."""
    used = _run("ip", "-o", "-4", "addr", "show")
    for _ in range(100):
        # Not a secret: only spreads parallel runs over the range.
        third, fourth = random.randrange(256), random.randrange(64) * 4  # noqa: S311
        subnet = ipaddress.IPv4Network(f"10.200.{third}.{fourth}/30")
        if not any(f" {host}/" in used for host in subnet):
            return subnet
    raise RuntimeError("no free /30 in 10.200.0.0/16 for a test namespace")


def _delete(namespace: str, veth: str) -> None:
    # Deleting the namespace deletes the veth end inside it, and with it the pair.
    for args in (["ip", "netns", "del", namespace], ["ip", "link", "del", veth]):
        subprocess.run(args, capture_output=True, check=False)  # noqa: S603 - our own names


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # The command name may hold spaces and parentheses: fields follow the last ")".
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


class NamespacedPostgres(EmbeddedPostgres):
    """An EmbeddedPostgres in a network namespace of its own, with faults on demand.

    ``host`` is the server's address in the namespace (``url`` and ``dsn`` use it); the
    server also listens on the namespace's own 127.0.0.1. Not thread-safe, like its base.
    """

    def __init__(
        self,
        *,
        max_connections: int = 100,
        settings: Mapping[str, Setting] | None = None,
        bin_dir: Path | str | None = None,
    ) -> None:
        """Create the namespace, the veth pair and the temporary directory; `start` starts.

        Raises:
            RuntimeError: not root, or ``ip``/``iptables`` is missing or failed.
        """
        if os.geteuid() != 0:
            raise RuntimeError("NamespacedPostgres needs root (ip netns, iptables)")
        if missing := [tool for tool in _TOOLS if shutil.which(tool) is None]:
            raise RuntimeError(f"NamespacedPostgres needs {', '.join(missing)} on PATH")
        tag = uuid.uuid4().hex[:8]
        self.namespace, veth, peer = f"uow-{tag}", f"uow{tag}a", f"uow{tag}b"
        subnet = _free_subnet()
        outside, inside = (str(host) for host in subnet.hosts())
        _run("ip", "netns", "add", self.namespace)
        self._ns_finalizer = weakref.finalize(self, _delete, self.namespace, veth)
        try:
            _run("ip", "link", "add", veth, "type", "veth", "peer", "name", peer)
            _run("ip", "link", "set", peer, "netns", self.namespace)
            _run("ip", "addr", "add", f"{outside}/30", "dev", veth)
            _run("ip", "link", "set", veth, "up")
            self._in_ns("ip", "addr", "add", f"{inside}/30", "dev", peer)
            self._in_ns("ip", "link", "set", peer, "up")
            self._in_ns("ip", "link", "set", "lo", "up")
            super().__init__(max_connections=max_connections, settings=settings, bin_dir=bin_dir)
        except BaseException:
            self._ns_finalizer()
            raise
        self.host, self._client = inside, outside
        # After the base's settings, so these win; the base refuses them from callers.
        self._extra.append(f"listen_addresses = '127.0.0.1,{inside}'")

    def __repr__(self) -> str:
        return f"NamespacedPostgres(namespace={self.namespace!r}, host={self.host!r})"

    def _in_ns(self, *args: str) -> str:
        return _run("ip", "netns", "exec", self.namespace, *args)

    def _initdb(self) -> None:
        super()._initdb()
        # initdb's rules cover loopback only; clients come from the veth's other end.
        with (self.data_dir / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all all {self._client}/32 scram-sha-256\n")

    def start(self) -> Self:
        """Start the server inside the namespace (see `EmbeddedPostgres.start`)."""
        failure: list[BaseException] = []

        def start_inside() -> None:
            # setns() moves only the calling thread; pg_ctl and the postmaster it forks
            # inherit the namespace, and drop root as usual.
            try:
                with open(f"/run/netns/{self.namespace}") as handle:
                    libc = ctypes.CDLL(None, use_errno=True)
                    if libc.setns(handle.fileno(), _CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), "setns failed")
                super(NamespacedPostgres, self).start()
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                failure.append(exc)

        thread = threading.Thread(target=start_inside, name="uow-netns-start")
        thread.start()
        thread.join()
        if failure:
            raise failure[0]
        return self

    @contextlib.contextmanager
    def black_hole(self) -> Iterator[None]:
        """Drop every packet into and out of the namespace until the block ends."""
        for chain in ("INPUT", "OUTPUT"):
            self._in_ns("iptables", "-A", chain, "-j", "DROP")
        try:
            yield
        finally:
            for chain in ("INPUT", "OUTPUT"):
                self._in_ns("iptables", "-D", chain, "-j", "DROP")

    @contextlib.contextmanager
    def freeze(self) -> Iterator[None]:
        """SIGSTOP the postmaster and all its children until the block ends (then SIGCONT)."""
        postmaster = _postmaster_pid(self.data_dir)
        if postmaster is None:
            raise RuntimeError(f"{self!r} is not running; nothing to freeze")
        # The postmaster first: stopped, it forks no new children while they are listed.
        os.kill(postmaster, signal.SIGSTOP)
        stopped = [postmaster]
        try:
            for child in _children(postmaster):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGSTOP)
                    stopped.append(child)
            yield
        finally:
            for pid in reversed(stopped):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)

    def cleanup(self) -> None:
        """Stop the server, delete its directory, then the namespace. Idempotent."""
        try:
            super().cleanup()
        finally:
            self._ns_finalizer()
