"""Failovers on a real Patroni cluster, under 8 writers using ``run_transaction(wait=30)``.

One cluster for the module (etcd, two PostgreSQL 15 nodes in ``synchronous_mode``,
haproxy with Patroni's REST check; `uow.testing.PatroniCluster`); the scenarios run one
after another, each bringing the cluster back to health before it starts. The events and
the writer load are the failover benchmark's (``benchmarks/failover.py``,
``benchmarks/writers.py``), so the figures the tests bound are the ones it reports.

Every scenario asserts: no acknowledged write is lost; no error reaches a caller but
``CommitOutcomeUnknown`` for a COMMIT in flight when the old primary went away, at most
one per writer; nothing is left checked out of the pool or idle in a transaction on the
leader. Each event adds its own bound on when writes are back.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

from benchmarks.failover import EVENTS, Outcome, run_event, table
from uow.testing import PatroniCluster

pytestmark = pytest.mark.slow

SWITCHOVER_BACK = 3.0  # seconds from the switchover's return to the first write after it
KILL_MARGIN = 3.0  # seconds past the ttl, from the kill to the first write after it
READ_ONLY_BACK = 2.0  # seconds from the read-only reset to the first write after it


@pytest.fixture(scope="module")
def cluster() -> Iterator[PatroniCluster]:
    """A Patroni cluster for the module's scenarios, torn down even if one fails; nothing
    of it may still listen afterwards."""
    with PatroniCluster() as started:
        yield started
    ports = [started.haproxy_port]
    ports += [port for node in started.nodes.values() for port in (node.port, node.api_port)]
    for port in ports:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()


def run(cluster: PatroniCluster, event: str, path: str, stack: str = "uow") -> Outcome:
    """Run one event under 8 writers, print its figures, and check what every event must."""
    [outcome] = run_event(cluster, EVENTS[event], path, [stack])
    print(f"\n{table([outcome])}\n{outcome.summary}")  # the figures, with pytest -s
    summary = outcome.summary
    assert summary.lost == 0, f"{summary.lost} acknowledged writes lost: {summary}"
    assert set(summary.errors) <= {"CommitOutcomeUnknown"}, summary
    assert summary.most_errors_per_writer.get("CommitOutcomeUnknown", 0) <= 1, summary
    assert outcome.checked_out == 0, f"{outcome.checked_out} connections left checked out"
    assert outcome.idle_in_transaction == 0, "sessions left idle in transaction on the leader"
    assert summary.back_after_end is not None, f"no write came back after the fault: {summary}"
    return outcome


@pytest.mark.parametrize(
    ("path", "stack"),
    [("multi-host", "uow"), ("haproxy", "uow"), ("multi-host", "uow-async")],
)
def test_switchover(cluster: PatroniCluster, path: str, stack: str) -> None:
    """A switchover loses nothing and writes are back within 3 s of its return."""
    outcome = run(cluster, "switchover", path, stack)
    assert outcome.summary.back_after_end <= SWITCHOVER_BACK, outcome.summary


@pytest.mark.parametrize("path", ["multi-host", "haproxy"])
def test_leader_killed(cluster: PatroniCluster, path: str) -> None:
    """A crashed leader loses nothing and writes are back within ttl + 3 s of the kill."""
    outcome = run(cluster, "kill", path)
    back = outcome.fault.ended + outcome.summary.back_after_end - outcome.fault.started
    assert back <= cluster.ttl + KILL_MARGIN, (back, outcome.summary)


@pytest.mark.parametrize("path", ["multi-host", "haproxy"])
def test_read_only_primary(cluster: PatroniCluster, path: str) -> None:
    """A primary read-only for 4 s: callers wait with no error, writes are back within
    2 s of the reset, and the pool is not left holding read-only connections."""
    outcome = run(cluster, "read-only", path)
    assert not outcome.summary.errors, outcome.summary
    assert outcome.summary.back_after_end <= READ_ONLY_BACK, outcome.summary


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"nodes": 1}, "nodes must be at least 2"),
        ({"loop_wait": 0}, "loop_wait must be at least 1 s"),
        ({"retry_timeout": 1}, "retry_timeout must be at least 2 s"),
        ({"ttl": 4}, "ttl must be at least loop_wait \\+ 2 \\* retry_timeout = 5 s"),
        ({"bin_dir": "/nonexistent"}, "bin_dir /nonexistent has no postgres binary"),
    ],
)
def test_cluster_arguments_are_checked(arguments: dict[str, Any], message: str) -> None:
    """PatroniCluster refuses a setting Patroni could not fail over with, before starting."""
    with pytest.raises(ValueError, match=message):
        PatroniCluster(**arguments)
