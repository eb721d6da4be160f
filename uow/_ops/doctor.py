"""``uow doctor``: look at the server with the current settings and say what needs action.

One connection, with the application's URL and ``application_name`` (but none of uow's
startup options and no prepared statements, so that it works through PgBouncer in any
mode too), reads the server's limits, who holds
connections, transactions left open and the longest statements, the standbys
streaming from it, then checks the connection budget and the settings. Each
configured read replica gets one connection too, for its recovery state, its lag and
its own budget. With several hosts in the URL, each is shown with its role, whether it
answers and its lag (:mod:`uow._ops.doctor_hosts`: one short connection to each; never
libpq's default host), also when no host could be connected to. The report is plain
text or JSON; the exit code says whether anything needs action (0 no, 1 yes, 2 the
server could not be reached).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterator
from typing import Any, TextIO

from sqlalchemy.exc import SQLAlchemyError

from .._database import Database
from .._engine.budget import job_worker_name, process_name, read_budget
from .._engine.timeouts import TIMEOUT_PARAMETERS
from .._errors import UnitOfWorkError
from .._settings import Settings
from . import pooler
from .activity import collect_activity, render_activity, table
from .doctor_hosts import host_findings, host_rows, lag_findings, read_hosts, read_role
from .doctor_replicas import (
    DEFAULT_MAX_REPLICA_LAG,
    read_replica,
    read_replication,
    read_wal_position,
    replica_findings,
    replication_tables,
)
from .report import EXIT_UNREACHABLE, Finding, Report
from .terminal import describe_failure, printable

__all__ = ["diagnose", "render", "run"]

_LIMITS = """
SELECT current_setting('server_version'),
       current_setting('max_connections')::int,
       current_setting('superuser_reserved_connections')::int,
       current_setting('reserved_connections', true)::int
"""


def diagnose(
    settings: Settings,
    *,
    idle_threshold: float = 60.0,
    max_replica_lag: float = DEFAULT_MAX_REPLICA_LAG,
) -> Report:
    """Connect with ``settings`` and collect the report.

    Args:
        settings: How the application connects; the budget is checked for these values.
        idle_threshold: Seconds after which a session ``idle in transaction`` needs action.
        max_replica_lag: Seconds of replication lag after which a read replica needs action.

    Returns:
        The report; its ``exit_code`` is 0 or 1.

    Raises:
        UnitOfWorkError: The server could not be reached (``DatabaseUnavailable``).
        sqlalchemy.exc.SQLAlchemyError: The driver failed in a way uow does not classify.
    """
    report = Report(url=settings.masked_url, application_name=settings.application_name)
    report.settings = {
        name: getattr(settings, name)
        for name in (
            "pool_size",
            "max_overflow",
            "processes",
            "pool_pre_ping",
            "pool_recycle",
            "statement_timeout",
            "lock_timeout",
            "idle_in_transaction_timeout",
        )
    }
    # The budget is read below, and reported instead of raised.
    with _connect(settings) as raw:
        _read_server(raw, report)
        # The host libpq chose, among several; its socket directory for a unix socket.
        reached = (str(raw.info.host), int(raw.info.port))
        report.server["host"], report.server["port"] = reached
        server_port, pooled = _read_defaults(raw, report)
        report.budget = _budget(raw, settings)
        in_recovery, wal_lsn = read_wal_position(raw)
        report.server["in_recovery"] = in_recovery
        main = read_role(raw)
        report.server["role"] = main["role"]
        if in_recovery:
            main.update(read_replica(raw, None))
        else:
            report.replication = main["standbys"] = read_replication(raw)
    report.pgbouncer = pooler.detect(settings, reached, server_port, pooled=pooled)
    # Behind PgBouncer the pools hold client connections; PgBouncer bounds the server's.
    report.budget["applies"] &= not report.pgbouncer.get("detected")
    report.replicas = [_read_replica(settings, url, wal_lsn) for url in settings.replica_urls]
    report.hosts = read_hosts(settings, reached, main)
    report.warnings = _warnings(settings, report, idle_threshold)
    report.warnings += host_findings(settings, report.hosts)
    report.warnings += lag_findings(report.hosts, max_replica_lag)
    report.warnings += replica_findings(report.replicas, max_replica_lag)
    return report


@contextlib.contextmanager
def _connect(settings: Settings) -> Iterator[Any]:
    """One raw connection to the server of ``settings`` (budget not checked)."""
    # The way that works everywhere, PgBouncer in any mode included: no startup options,
    # no prepared statements, nothing set on the session. The budget is read by the
    # caller, and reported instead of raised.
    one = settings.replace(
        check_budget=False, pool_size=1, replica_urls=(), pgbouncer="transaction"
    )
    with Database(one) as database, database.engine.connect() as connection:
        yield connection.connection.dbapi_connection


def _read_defaults(raw: Any, report: Report) -> tuple[int | None, bool]:
    """Record the timeouts a session gets when uow sets none.

    Returns:
        The server's port, and whether a pooler stands in between: PgBouncer gives its
        clients process ids of its own (see :mod:`uow._ops.pooler`).
    """
    cursor = raw.cursor()
    try:
        # The role's, database's or server's value: what a session starts with.
        for name in TIMEOUT_PARAMETERS.values():
            cursor.execute(f"SHOW {name}")
            report.server[f"default_{name}"] = cursor.fetchone()[0]
        cursor.execute("SELECT inet_server_port(), pg_backend_pid()")
        port, server_pid = cursor.fetchone()
    finally:
        cursor.close()
        raw.rollback()
    return port, server_pid != raw.info.backend_pid


def _budget(raw: Any, settings: Settings) -> dict[str, Any]:
    budget = read_budget(raw, settings)
    return {
        "processes": budget.processes,
        "per_process": budget.per_process,
        "needed": budget.needed,
        "max_connections": budget.max_connections,
        "reserved": budget.reserved,
        "used_by_others": budget.used_by_others,
        "available": budget.available,
        "exceeded": budget.needed > budget.available,
        "applies": settings.pgbouncer == "off",
    }


def _read_replica(settings: Settings, url: str, primary_lsn: str | None) -> dict[str, Any]:
    """What one configured read replica says: recovery, lag and budget; or why it failed."""
    replica = settings.replace(url=url)
    entry: dict[str, Any] = {"url": replica.masked_url, "reachable": False}
    try:
        with _connect(replica) as raw:
            entry.update(read_replica(raw, primary_lsn), budget=_budget(raw, replica))
    except (UnitOfWorkError, SQLAlchemyError) as exc:
        entry["error"] = describe_failure(exc, replica)
        return entry
    entry["reachable"] = True
    return entry


def _processes(connections: list[dict[str, Any]], name: str) -> dict[str, dict[str, int]]:
    """The web and job worker processes of application ``name``, and their connections.

    A process is one application_name: uow's names carry the process id (``uow:bank[42]``
    for a web worker, ``uow-jobs:bank[43]`` for a job worker).
    """
    found = {}
    for kind, base in (("web worker", name), ("job worker", job_worker_name(name))):
        prefix = process_name(base, 0).removesuffix("0]")  # cut where every process cuts
        names = {
            c["application_name"]
            for c in connections
            if c["application_name"] == base
            or (
                c["application_name"].startswith(prefix)
                and c["application_name"][len(prefix) : -1].isdigit()
                and c["application_name"].endswith("]")
            )
        }
        found[kind] = {
            "processes": len(names),
            "connections": sum(c["count"] for c in connections if c["application_name"] in names),
        }
    return found


def _read_server(raw: Any, report: Report) -> None:
    cursor = raw.cursor()
    try:
        cursor.execute(_LIMITS)
        version, max_connections, superuser, reserved = cursor.fetchone()
        report.server = {
            "version": version,
            "max_connections": max_connections,
            "superuser_reserved_connections": superuser,
            "reserved_connections": reserved,  # None before PostgreSQL 16
        }
    finally:
        cursor.close()
    activity = collect_activity(raw)
    report.connections = activity.connections
    report.processes = _processes(activity.connections, report.application_name)
    report.idle_in_transaction = activity.idle_in_transaction
    report.longest_transactions = activity.longest_transactions
    report.longest_queries = activity.longest_queries


def _warnings(settings: Settings, report: Report, idle_threshold: float) -> list[Finding]:
    found: list[Finding] = []

    def warn(code: str, message: str, advice: str, *, action: bool) -> None:
        found.append(Finding(code, message, advice, action))

    found.extend(pooler.findings(settings, report.pgbouncer))
    budget = report.budget
    # Behind PgBouncer the pools hold client connections; PgBouncer bounds the server's.
    if budget["exceeded"] and budget["applies"]:
        warn(
            "budget_exceeded",
            f"connection budget exceeded: {budget['processes']} processes x "
            f"{budget['per_process']} = {budget['needed']} needed, {budget['available']} "
            "available",
            "lower UOW_POOL_SIZE or UOW_MAX_OVERFLOW, run fewer processes, raise "
            "max_connections, or put PgBouncer in front",
            action=True,
        )
    stuck = [s for s in report.idle_in_transaction if s.seconds > idle_threshold]
    for session in stuck:
        warn(
            "idle_in_transaction",
            f"pid {session.pid} ({session.application_name or '-'}) idle in transaction for "
            f"{session.seconds:.1f} s (threshold {idle_threshold:g} s)",
            "find the code that opens a transaction and then waits (network calls, user "
            "input); keep transactions short and set idle_in_transaction_timeout",
            action=True,
        )
    for name, parameter in TIMEOUT_PARAMETERS.items():
        variable = f"UOW_{name.upper()}"
        # Off in uow but set on the role or database (as behind PgBouncer, to save the
        # per-transaction round trip) is fine.
        if getattr(settings, name) == 0 and report.server[f"default_{parameter}"] == "0":
            warn(
                f"{name}_disabled",
                f"{name} is disabled ({variable}=0)",
                f"set {variable} to a limit in seconds so the server stops what runs away",
                action=True,
            )
    if not settings.pool_pre_ping:
        warn(
            "pre_ping_off",
            "pool_pre_ping is off (UOW_PRE_PING=false)",
            "a connection killed by a restart or failover will fail its caller; turn it on",
            action=False,
        )
    if settings.pool_recycle == -1:
        warn(
            "pool_recycle_disabled",
            "pool_recycle is disabled (UOW_POOL_RECYCLE=-1)",
            "connections dropped by load balancers or PgBouncer idle limits go unnoticed; "
            "set it below those limits (default 300 s)",
            action=False,
        )
    if settings.max_overflow > 0:
        warn(
            "overflow_churn",
            f"max_overflow={settings.max_overflow}: overflow churn",
            "overflow connections are opened and closed on every burst, each costing the "
            "server a backend start; prefer a larger pool_size and UOW_MAX_OVERFLOW=0",
            action=False,
        )
    return found


def render(report: Report) -> str:
    """The report as a plain-text table."""
    lines = [f"uow doctor: {report.url} (application_name {report.application_name})", ""]
    server = report.server
    lines += ["Server", *table(["setting", "value"], [[k, v] for k, v in server.items()]), ""]
    lines += render_activity(
        report.connections,
        report.idle_in_transaction,
        report.longest_transactions,
        report.longest_queries,
    )
    kinds = [[kind, n["processes"], n["connections"]] for kind, n in report.processes.items()]
    lines += ["This application's processes", *table(["kind", "processes", "connections"], kinds)]
    lines += [""]
    lines += ["Connection budget", *_budget_lines(report.budget), ""]
    bouncer = report.pgbouncer
    if bouncer.get("detected"):
        keys = ["version", "pool_mode", "max_prepared_statements", "default_pool_size"]
        lines += ["PgBouncer", *table(keys, [[bouncer[k] for k in keys]]), ""]
    for title, headers, rows in replication_tables(report.replication, report.replicas):
        lines += [title, *table(headers, rows), ""]
    lines += _hosts_and_warnings(report.hosts, report.warnings)
    # Warnings quote application names and replicas' errors: the server's text.
    return printable("\n".join(lines), keep_newlines=True)


def _hosts_and_warnings(hosts: list[dict[str, Any]], warnings: list[Finding]) -> list[str]:
    lines = []
    if len(hosts) > 1:
        headers, rows = host_rows(hosts)
        lines += ["Hosts (in the order libpq tries them)", *table(headers, rows), ""]
    if warnings:
        lines.append("Warnings")
        for w in warnings:
            tag = "ACTION" if w.action else "advice"
            lines.append(f"  [{tag}] {w.message}\n           -> {w.advice}")
    else:
        lines.append("No warnings.")
    return lines


def _unreachable(settings: Settings, reason: str, *, as_json: bool, out: TextIO) -> None:
    """With several hosts and no connection, what each one is: none writable, during a
    failover, is when this matters most."""
    hosts = read_hosts(settings, None, {})
    if not hosts:
        return
    warnings = host_findings(settings, hosts)
    if as_json:
        data = {
            "url": settings.masked_url,
            "application_name": settings.application_name,
            "error": reason,
            "hosts": hosts,
            "warnings": [dataclasses.asdict(w) for w in warnings],
            "exit_code": EXIT_UNREACHABLE,
        }
        print(json.dumps(data, indent=2, sort_keys=True), file=out)
        return
    lines = [f"uow doctor: no connection to {settings.masked_url}; its hosts:", ""]
    lines += _hosts_and_warnings(hosts, warnings)
    print(printable("\n".join(lines), keep_newlines=True), file=out)


def _budget_lines(budget: dict[str, Any]) -> list[str]:
    if not budget["applies"]:
        return [
            "  not checked: behind PgBouncer the pools hold connections to PgBouncer, and",
            "  PgBouncer's default_pool_size bounds the server's connections",
        ]
    return table(
        ["needed", "available", "max_connections", "reserved", "used_by_others"],
        [
            [
                f"{budget['processes']} x {budget['per_process']} = {budget['needed']}",
                budget["available"],
                budget["max_connections"],
                budget["reserved"],
                budget["used_by_others"],
            ]
        ],
    )


def run(
    settings: Settings,
    *,
    as_json: bool = False,
    idle_threshold: float = 60.0,
    max_replica_lag: float = DEFAULT_MAX_REPLICA_LAG,
    out: TextIO,
    err: TextIO,
) -> int:
    """Run the doctor and print its report.

    Args:
        settings: How the application connects.
        as_json: Print JSON instead of the text table.
        idle_threshold: Seconds after which a session idle in transaction needs action.
        max_replica_lag: Seconds of lag after which a read replica needs action.
        out: Where the report goes.
        err: Where the one-line error goes when the server cannot be reached.

    Returns:
        The exit code: 0 nothing needs action, 1 something does, 2 unreachable.
    """
    try:
        report = diagnose(settings, idle_threshold=idle_threshold, max_replica_lag=max_replica_lag)
    except (UnitOfWorkError, SQLAlchemyError) as exc:
        # The masked URL, then libpq's reason with the passwords hidden.
        reason = describe_failure(exc, settings)
        print(f"uow doctor: cannot reach {settings.masked_url}: {reason}", file=err)
        _unreachable(settings, reason, as_json=as_json, out=out)
        return EXIT_UNREACHABLE
    if as_json:
        print(json.dumps(report.as_dict(), indent=2, sort_keys=True), file=out)
    else:
        print(render(report), file=out)
    return report.exit_code
