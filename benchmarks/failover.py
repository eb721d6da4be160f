"""Failovers and hung servers: uow against plain SQLAlchemy, side by side.

    python -m benchmarks.failover [--events switchover,kill,read-only,black-hole,stopped]
        [--paths multi-host,haproxy] [--stacks uow,sqlalchemy] [--writers 8]
        [--hold 20] [--blocked-limit 60]

For the failover events, starts a :class:`uow.testing.PatroniCluster` (etcd, two
PostgreSQL 15 nodes under Patroni 3 with ``synchronous_mode``, haproxy with Patroni's
REST check); for the hung-server events, a :class:`~uow.testing._netns.NamespacedPostgres`
(one server behind a network namespace; path ``namespace``). Each is started only when
one of its events is selected. For each event and path every stack's writers run at once
(8 threads each, each write a unique key in its own transaction:
``run_transaction(fn, wait=30)`` for uow; a ``Session`` per write on
``create_engine(url, pool_pre_ping=True)``, same URL, for plain SQLAlchemy), the event
is injected, and once the server is healthy again the keys are read back. Prints a
Markdown table and writes ``benchmarks/results/failover.md`` and ``.json``.

Events (``EVENTS``):

- ``switchover``: Patroni's ``POST /switchover``; the fault ends when it returns.
- ``kill``: SIGKILL of the leader's Patroni, postmaster and backends (the node
  crashes); the fault ends when the standby is the primary (about ``ttl`` later).
- ``read-only``: ``ALTER SYSTEM SET default_transaction_read_only = on`` and a reload
  on the leader, held 4 s, then reset; the fault ends at the reset. With two nodes the
  other one is a standby, so there is no writable host meanwhile: what counts is that
  callers see no error and writes come back as soon as the primary is writable again.

Hung-server events (a :class:`Hang` each), held ``--hold`` seconds, then healed; the
fault ends at the heal. Both stacks get the same scaled-down limits (`HUNG_TIMEOUTS`:
``statement_timeout`` 5 s, ``connect_timeout`` 5 s):

- ``black-hole``: iptables DROP of every packet in and out of the namespace.
- ``stopped``: SIGSTOP of the postmaster and all its children (SIGCONT at the heal).

A call still blocked ``--blocked-limit`` seconds after the heal is given up on and
reported as such (``> N s, still blocked``), never dropped.

Extension point: an event is an :class:`Event`, whose ``inject(cluster)`` causes a
fault on the Patroni cluster, waits for it to end and returns its :class:`Fault` times,
or a :class:`Hang`, a fault on the namespaced server held for ``--hold`` seconds. Add
one to ``EVENTS`` and it is run by ``--events`` and by the tests that use the table.
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
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from benchmarks.writers import (
    STACKS,
    Summary,
    Timeouts,
    WriterLoad,
    any_of,
    create_table,
    stored_keys,
)
from benchmarks.writers import summarise as summarise_writes
from uow._engine.watchdog import GRACE, TCP_GRACE
from uow.testing import PatroniCluster
from uow.testing._netns import NamespacedPostgres

READ_ONLY_HOLD = 4.0  # seconds the primary stays read-only
HOLD = 20.0  # seconds a hung-server fault is held by default: shorter than the wait (30 s)
BLOCKED_LIMIT = 60.0  # seconds after the heal the benchmark waits for calls blocked before it
HUNG_TIMEOUTS = Timeouts(statement_timeout=5.0, connect_timeout=5.0)
PG15 = "/usr/lib/postgresql/15/bin"


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


PATRONI_EVENTS: dict[str, Event] = {
    "switchover": Event("switchover", switchover, "switchover returned"),
    "kill": Event("kill", kill_leader, "standby promoted"),
    "read-only": Event("read-only", read_only, "read-only reset"),
}


@dataclass(frozen=True)
class Hang:
    """A server that stops answering: ``fault(server)`` is held, then left (healed)."""

    name: str
    fault: Callable[[NamespacedPostgres], AbstractContextManager[None]]
    ends: str = "healed"


EVENTS: dict[str, Event | Hang] = {
    **PATRONI_EVENTS,
    "black-hole": Hang("black-hole", NamespacedPostgres.black_hole),
    "stopped": Hang("stopped", NamespacedPostgres.freeze),
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
        still_blocked: How long each call the benchmark gave up on had been blocked
            when it did (a hung event's ``--blocked-limit``); empty if none.
    """

    event: str
    path: str
    stack: str
    fault: Fault
    summary: Summary
    checked_out: int
    idle_in_transaction: int
    still_blocked: list[float] = field(default_factory=list)


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


def run_hang(
    server: NamespacedPostgres,
    hang: Hang,
    stacks: Sequence[str],
    *,
    writers: int = 8,
    hold: float = HOLD,
    blocked_limit: float = BLOCKED_LIMIT,
    before: float = 2.0,
    after: float = 10.0,
) -> list[Outcome]:
    """Run each stack's writers at once against ``server``, hold ``hang`` for ``hold`` s.

    After the heal, waits until no call that began before it is still in progress (at
    most ``blocked_limit`` seconds; the calls still blocked then are reported in
    `Outcome.still_blocked`), then ``after`` seconds more to measure the throughput.
    """
    create_table(server.dsn)
    tag = uuid.uuid4().hex[:8]
    loads = [
        WriterLoad(
            stack, server.url, f"{hang.name}-{stack}-{tag}", writers=writers, timeouts=HUNG_TIMEOUTS
        )
        for stack in stacks
    ]
    with contextlib.ExitStack() as exits:
        for load in loads:
            exits.enter_context(load)
        time.sleep(before)
        with hang.fault(server):
            started = time.monotonic()
            time.sleep(hold)
        fault = Fault(started, time.monotonic(), server.host)
        deadline = fault.ended + blocked_limit
        while any(load.in_calls(fault.ended) for load in loads):
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        else:
            time.sleep(after)
        # Past the deadline, the writers not blocked finish their call within seconds.
        wait = 5.0 if time.monotonic() > deadline else 60.0
        blocked = [load.stop(timeout=wait, abandon=True) for load in loads]
        given_up = time.monotonic()
        # A writer given up on still holds its connection: counted, not waited for.
        checked_out = [_checked_out(load) for load in loads]
        idle = _idle_in_transaction(server.dsn)
        return [
            Outcome(
                event=hang.name,
                path="namespace",
                stack=load.stack,
                fault=fault,
                summary=summarise_writes(
                    load.writes,
                    stored_keys(server.dsn, load.run),
                    fault_start=fault.started,
                    fault_end=fault.ended,
                    until=given_up,
                ),
                checked_out=count,
                idle_in_transaction=idle,
                still_blocked=sorted(given_up - start for start in calls.values()),
            )
            for load, count, calls in zip(loads, checked_out, blocked, strict=True)
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


def _seconds(value: float | None, sign: str = "") -> str:
    return "never" if value is None else f"{value:{sign}.1f} s"


def _longest_call(outcome: Outcome) -> str:
    if outcome.still_blocked:
        count = len(outcome.still_blocked)
        return f"> {outcome.still_blocked[-1]:.0f} s, {count} still blocked"
    return f"{outcome.summary.longest_call:.1f} s"


def table(outcomes: Sequence[Outcome]) -> str:
    """The Markdown table of the outcomes."""
    lines = [
        "| event | path | stack | longest gap without a write | longest call "
        "| errors reaching callers | lost acknowledged writes | fault end to first write "
        "| fault end to full throughput | acknowledged |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for outcome in outcomes:
        summary = outcome.summary
        lines.append(
            f"| {outcome.event} | {outcome.path} | {outcome.stack} "
            f"| {summary.longest_gap:.1f} s | {_longest_call(outcome)} "
            f"| {any_of(summary.errors)} | {summary.lost} "
            f"| {_seconds(summary.back_after_end, '+')} | {_seconds(summary.to_full)} "
            f"| {summary.acknowledged} |"
        )
    return "\n".join(lines)


def _print(outcomes: Sequence[Outcome]) -> None:
    for outcome in outcomes:
        print(table([outcome]).splitlines()[-1], flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", default=",".join(EVENTS))
    parser.add_argument("--paths", default=",".join(PATHS), help="for the Patroni events")
    parser.add_argument("--stacks", default="uow,sqlalchemy")
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument(
        "--hold", type=float, default=HOLD, help="seconds a hung-server fault is held"
    )
    parser.add_argument(
        "--blocked-limit",
        type=float,
        default=BLOCKED_LIMIT,
        help="seconds after a heal to wait for calls blocked since before it",
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    # uow logs a warning each time a caller starts waiting out an outage; the table counts
    # what reached the callers, which is what this compares.
    logging.getLogger("uow").setLevel(logging.ERROR)
    names, paths, stacks = (value.split(",") for value in (args.events, args.paths, args.stacks))
    known: dict[str, list[str]] = {"events": [*EVENTS], "paths": [*PATHS], "stacks": [*STACKS]}
    for kind, chosen in (("events", names), ("paths", paths), ("stacks", stacks)):
        if unknown := [name for name in chosen if name not in known[kind]]:
            parser.error(
                f"unknown {kind}: {', '.join(unknown)}; choose from {', '.join(known[kind])}"
            )
    if args.hold <= 0 or args.blocked_limit <= 0:
        parser.error("--hold and --blocked-limit must be positive (seconds)")
    events = [event for name in names if isinstance(event := EVENTS[name], Event)]
    hangs = [event for name in names if isinstance(event := EVENTS[name], Hang)]
    outcomes: list[Outcome] = []
    header = []
    if events:
        started = time.monotonic()
        with PatroniCluster() as cluster:
            up = time.monotonic() - started
            print(f"cluster up in {up:.1f} s (ttl {cluster.ttl} s)", flush=True)
            for event in events:
                for path in paths:
                    results = run_event(cluster, event, path, stacks, writers=args.writers)
                    _print(results)
                    outcomes.extend(results)
            header.append(_patroni_header(cluster.ttl, args.writers, events))
    if hangs:
        server = NamespacedPostgres(bin_dir=PG15)
        try:
            server.start()
            for hang in hangs:
                results = run_hang(
                    server,
                    hang,
                    stacks,
                    writers=args.writers,
                    hold=args.hold,
                    blocked_limit=args.blocked_limit,
                )
                _print(results)
                outcomes.extend(results)
        finally:
            server.cleanup()
        header.append(_hung_header(args.hold, args.blocked_limit, args.writers))
    report = "\n\n".join(
        [
            "# Failover",
            *header,
            "Fault end to first write: to the end of the gap that began after the fault "
            "(negative: writes were back before the fault was declared over). Full "
            "throughput: the first 1 s window at >= 80% of the pre-fault rate. Longest "
            "call: the longest time one caller was blocked in one call (uow: one "
            "`run_transaction` call, retries included; plain SQLAlchemy: one write "
            "attempt).",
            table(outcomes),
        ]
    )
    print()
    print(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "failover.md").write_text(report + "\n")
    rows = [dataclasses.asdict(outcome) for outcome in outcomes]
    (args.out / "failover.json").write_text(json.dumps(rows, indent=1) + "\n")


def _patroni_header(ttl: int, writers: int, events: Sequence[Event]) -> str:
    return (
        f"Failovers: a Patroni 3 cluster on loopback (etcd, two PostgreSQL 15 nodes, "
        f"`synchronous_mode`, ttl {ttl} s, loop_wait 1 s; haproxy with `GET /primary`, "
        f"inter 1 s, fall 2, rise 1). {writers} writers per stack, both stacks at "
        "once through the same event; each write inserts a unique key in its own "
        "transaction: uow `run_transaction(fn, wait=30)`, plain SQLAlchemy a `Session` "
        "per write on `create_engine(url, pool_pre_ping=True)` (an error sleeps 10 ms); "
        "both with their default timeouts. Fault end: "
        + "; ".join(f"{event.name}: {event.ends}" for event in events)
        + "."
    )


def _hung_header(hold: float, blocked_limit: float, writers: int) -> str:
    limits = HUNG_TIMEOUTS
    return (
        "Hung servers: one PostgreSQL 15 in a network namespace of its own (path "
        f"`namespace`), the fault held {hold:g} s and then healed (the fault's end): "
        "`black-hole` drops every packet in and out of the namespace (iptables), "
        "`stopped` is a SIGSTOP of the postmaster and all its backends. Same writers as "
        f"above ({writers} per stack, both at once), and the same limits for both stacks: "
        f"`statement_timeout` {limits.statement_timeout:g} s and `connect_timeout` "
        f"{limits.connect_timeout:g} s (uow: its settings, so its watchdog gives up on a "
        f"statement after {limits.statement_timeout:g} + {GRACE:g} s and libpq's "
        f"`tcp_user_timeout` is {limits.statement_timeout:g} + {TCP_GRACE:g} s; plain "
        f"SQLAlchemy: `connect_args={limits.connect_args()!r}`). "
        f"A call still blocked {blocked_limit:g} s after the heal is given up on and "
        "shown as `> N s, still blocked`."
    )


if __name__ == "__main__":
    main()
