"""Failovers on a real Patroni cluster: uow against plain SQLAlchemy, side by side.

    python -m benchmarks.failover [--events switchover,kill,read-only]
        [--paths multi-host,haproxy] [--stacks uow,sqlalchemy] [--writers 8]

Starts a :class:`uow.testing.PatroniCluster` (etcd, two PostgreSQL 15 nodes under
Patroni 3 with ``synchronous_mode``, haproxy with Patroni's REST check), then for each
event and path runs every stack's writers at once (8 threads each, each write a unique
key in its own transaction: ``run_transaction(fn, wait=30)`` for uow; a ``Session`` per
write on ``create_engine(url, pool_pre_ping=True)``, same URL, for plain SQLAlchemy),
injects the event, and once the cluster is healthy again reads the keys back from the
leader. Prints a Markdown table and writes ``benchmarks/results/failover.md``.

Events (``EVENTS``):

- ``switchover``: Patroni's ``POST /switchover``; the fault ends when it returns.
- ``kill``: SIGKILL of the leader's Patroni, postmaster and backends (the node
  crashes); the fault ends when the standby is the primary (about ``ttl`` later).
- ``read-only``: ``ALTER SYSTEM SET default_transaction_read_only = on`` and a reload
  on the leader, held 4 s, then reset; the fault ends at the reset. With two nodes the
  other one is a standby, so there is no writable host meanwhile: what counts is that
  callers see no error and writes come back as soon as the primary is writable again.

Extension point: an event is an :class:`Event`, whose ``inject(cluster)`` causes the
fault, waits for it to end and returns its :class:`Fault` times. Add one to ``EVENTS``
(e.g. a black hole or a SIGSTOP of the leader, with the hung-server harness) and it is
run by ``--events`` and by the tests that iterate over the table.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg

from benchmarks.writers import STACKS, Summary, WriterLoad, any_of, create_table, stored_keys
from benchmarks.writers import summarise as summarise_writes
from uow.testing import PatroniCluster

READ_ONLY_HOLD = 4.0  # seconds the primary stays read-only


@dataclass(frozen=True)
class Fault:
    """When a fault began and when it was over (monotonic clock), and on which node."""

    started: float
    ended: float
    node: str


@dataclass(frozen=True)
class Event:
    """A fault to inject: ``inject`` causes it, waits for its end and returns its times."""

    name: str
    inject: Callable[[PatroniCluster], Fault]
    ends: str  # what "the fault's end" means, for the report


def _leader(cluster: PatroniCluster) -> str:
    leader = cluster.leader()
    if leader is None:
        raise RuntimeError(f"the cluster has no leader; members: {cluster.members()}")
    return leader


def switchover(cluster: PatroniCluster) -> Fault:
    """Patroni's switchover to the standby; over when Patroni reports it done."""
    leader = _leader(cluster)
    started = time.monotonic()
    cluster.switchover()
    return Fault(started, time.monotonic(), leader)


def kill_leader(cluster: PatroniCluster) -> Fault:
    """Crash the leader's node; over when another node is the primary."""
    started = time.monotonic()
    killed = cluster.kill_leader()
    deadline = started + cluster.ttl * 4 + 30
    while cluster.leader() in (None, killed):
        if time.monotonic() > deadline:
            raise RuntimeError(f"no new leader after killing {killed}: {cluster.members()}")
        time.sleep(0.05)
    return Fault(started, time.monotonic(), killed)


def read_only(cluster: PatroniCluster) -> Fault:
    """The primary turns read-only for `READ_ONLY_HOLD` seconds; over at the reset."""
    leader = _leader(cluster)
    cluster.execute(leader, "ALTER SYSTEM SET default_transaction_read_only = on")
    try:
        cluster.execute(leader, "SELECT pg_reload_conf()")
        started = time.monotonic()
        time.sleep(READ_ONLY_HOLD)
    finally:
        cluster.execute(leader, "ALTER SYSTEM RESET default_transaction_read_only")
        cluster.execute(leader, "SELECT pg_reload_conf()")
    return Fault(started, time.monotonic(), leader)


EVENTS: dict[str, Event] = {
    "switchover": Event("switchover", switchover, "switchover returned"),
    "kill": Event("kill", kill_leader, "standby promoted"),
    "read-only": Event("read-only", read_only, "read-only reset"),
}
PATHS: dict[str, Callable[[PatroniCluster], str]] = {
    "multi-host": lambda cluster: cluster.multi_host_url,
    "haproxy": lambda cluster: cluster.haproxy_url,
}


@dataclass(frozen=True)
class Outcome:
    """One stack's run through one event on one path.

    Attributes:
        checked_out: Connections still checked out of the pool once the writers stopped.
        idle_in_transaction: Sessions idle in a transaction on the leader afterwards.
    """

    event: str
    path: str
    stack: str
    fault: Fault
    summary: Summary
    checked_out: int
    idle_in_transaction: int


def run_event(
    cluster: PatroniCluster,
    event: Event,
    path: str,
    stacks: Sequence[str],
    *,
    writers: int = 8,
    before: float = 2.0,
    after: float = 4.0,
) -> list[Outcome]:
    """Run each stack's writers at once through ``path``, inject ``event``, and summarise.

    The writers run ``before`` seconds before the fault and ``after`` seconds after its
    end; then the cluster is brought back to health and the keys read from its leader.
    """
    cluster.wait_healthy()
    url = PATHS[path](cluster)
    create_table(cluster.dsn(_leader(cluster)))
    tag = uuid.uuid4().hex[:8]
    loads = [
        WriterLoad(stack, url, f"{event.name}-{path}-{stack}-{tag}", writers=writers)
        for stack in stacks
    ]
    with contextlib.ExitStack() as exits:
        for load in loads:
            exits.enter_context(load)
        time.sleep(before)
        fault = event.inject(cluster)
        time.sleep(after)
        for load in loads:
            load.stop()
        checked_out = [_checked_out(load) for load in loads]
        cluster.wait_healthy()
        leader = _leader(cluster)
        idle = _idle_in_transaction(cluster.dsn(leader))
        return [
            Outcome(
                event=event.name,
                path=path,
                stack=load.stack,
                fault=fault,
                summary=summarise_writes(
                    load.writes,
                    stored_keys(cluster.dsn(leader), load.run),
                    fault_start=fault.started,
                    fault_end=fault.ended,
                ),
                checked_out=count,
                idle_in_transaction=idle,
            )
            for load, count in zip(loads, checked_out, strict=True)
        ]


def _checked_out(load: WriterLoad) -> int:
    if load.database is not None:
        return load.database.stats().pool_checked_out
    assert load.engine is not None
    return int(load.engine.pool.checkedout())  # type: ignore[attr-defined]


def _idle_in_transaction(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%%' "
            "AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
        ).fetchone()
    return int(row[0]) if row else 0


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f} s"


def table(outcomes: Sequence[Outcome]) -> str:
    """The Markdown table of the outcomes."""
    lines = [
        "| event | path | stack | longest gap without a write | errors reaching callers "
        "| lost acknowledged writes | fault end to first write | fault end to full throughput "
        "| acknowledged |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for outcome in outcomes:
        summary = outcome.summary
        lines.append(
            f"| {outcome.event} | {outcome.path} | {outcome.stack} "
            f"| {summary.longest_gap:.1f} s | {any_of(summary.errors)} | {summary.lost} "
            f"| {summary.back_after_end:+.1f} s | {_seconds(summary.to_full)} "
            f"| {summary.acknowledged} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", default=",".join(EVENTS))
    parser.add_argument("--paths", default=",".join(PATHS))
    parser.add_argument("--stacks", default="uow,sqlalchemy")
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    # uow logs a warning each time a caller starts waiting out an outage; the table counts
    # what reached the callers, which is what this compares.
    logging.getLogger("uow").setLevel(logging.ERROR)
    events = [EVENTS[name] for name in args.events.split(",")]
    paths, stacks = args.paths.split(","), args.stacks.split(",")
    if unknown := [name for name in [*paths, *stacks] if name not in [*PATHS, *STACKS]]:
        parser.error(f"unknown paths or stacks: {', '.join(unknown)}")
    outcomes: list[Outcome] = []
    started = time.monotonic()
    with PatroniCluster() as cluster:
        print(f"cluster up in {time.monotonic() - started:.1f} s (ttl {cluster.ttl} s)", flush=True)
        for event in events:
            for path in paths:
                results = run_event(cluster, event, path, stacks, writers=args.writers)
                for outcome in results:
                    print(table([outcome]).splitlines()[-1], flush=True)
                outcomes.extend(results)
        ttl = cluster.ttl
    report = "\n\n".join(
        [
            "# Failover",
            f"A Patroni 3 cluster on loopback (etcd, two PostgreSQL 15 nodes, "
            f"`synchronous_mode`, ttl {ttl} s, loop_wait 1 s; haproxy with `GET /primary`, "
            f"inter 1 s, fall 2, rise 1). {args.writers} writers per stack, both stacks at "
            "once through the same event; each write inserts a unique key in its own "
            "transaction: uow `run_transaction(fn, wait=30)`, plain SQLAlchemy a `Session` "
            "per write on `create_engine(url, pool_pre_ping=True)` (an error sleeps 10 ms). "
            "Fault end: "
            + "; ".join(f"{event.name}: {event.ends}" for event in events)
            + ". Fault end to first write: to the end of the gap that began after the fault "
            "(negative: writes were back before the fault was declared over). Full "
            "throughput: the first 1 s window at >= 80% of the pre-fault rate.",
            table(outcomes),
        ]
    )
    print()
    print(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "failover.md").write_text(report + "\n")
    rows = [dataclasses.asdict(outcome) for outcome in outcomes]
    (args.out / "failover.json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
