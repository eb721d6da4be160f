"""``uow doctor``'s replication part: standbys of the primary and each read replica's lag.

Readers here take a raw driver connection opened by the doctor, and return plain
data for the report; :func:`replica_findings` says what needs action and
:func:`replication_tables` lays the data out for the text report.
"""

from __future__ import annotations

from typing import Any

from .report import Finding

__all__ = [
    "DEFAULT_MAX_REPLICA_LAG",
    "read_replica",
    "read_replication",
    "read_wal_position",
    "replica_findings",
    "replication_tables",
]

DEFAULT_MAX_REPLICA_LAG = 30.0

_WAL_POSITION = """
SELECT pg_is_in_recovery(),
       CASE WHEN NOT pg_is_in_recovery() THEN pg_current_wal_lsn()::text END
"""
# Standbys streaming from this server (empty on a standby without cascading ones).
_REPLICATION = """
SELECT application_name, host(client_addr), state,
       extract(epoch FROM write_lag)::float8,
       extract(epoch FROM flush_lag)::float8,
       extract(epoch FROM replay_lag)::float8,
       pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint
  FROM pg_stat_replication
 ORDER BY 1, 2
"""
# On a configured replica. The lag is the age of the last transaction replayed, but 0
# once everything the primary had written (read just before, %s) is replayed: on an
# idle primary the last replayed transaction gets old without the replica lagging.
_REPLICA = """
SELECT pg_is_in_recovery(),
       CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() END,
       CASE WHEN pg_is_in_recovery() THEN pg_wal_lsn_diff(
           coalesce(%s::pg_lsn, pg_last_wal_receive_lsn()), pg_last_wal_replay_lsn())
       END::bigint,
       extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8
"""
_LAGS = ("write_lag", "flush_lag", "replay_lag")


def _fetch(raw: Any, query: str, *args: Any) -> list[tuple[Any, ...]]:
    cursor = raw.cursor()
    try:
        cursor.execute(query, args or None)
        rows: list[tuple[Any, ...]] = cursor.fetchall()
        return rows
    finally:
        cursor.close()
        raw.rollback()  # leave the connection idle, not in a transaction


def read_wal_position(raw: Any) -> tuple[bool, str | None]:
    """Whether the server is in recovery, and else its current WAL position."""
    in_recovery, lsn = _fetch(raw, _WAL_POSITION)[0]
    return bool(in_recovery), lsn


def read_replication(raw: Any) -> list[dict[str, Any]]:
    """The standbys streaming from a primary: name, client, state, lags, bytes behind."""
    keys = ("application_name", "client_addr", "state", *_LAGS, "bytes_behind")
    return [dict(zip(keys, row, strict=True)) for row in _fetch(raw, _REPLICATION)]


def read_replica(raw: Any, primary_lsn: str | None) -> dict[str, Any]:
    """What a configured read replica says about its recovery and lag.

    Args:
        raw: A connection to the replica.
        primary_lsn: The primary's WAL position read just before, if known; the
            replica counts as caught up once it has replayed that far.
    """
    in_recovery, paused, behind, age = _fetch(raw, _REPLICA, primary_lsn)[0]
    lag = None
    if in_recovery:
        lag = 0.0 if behind is not None and behind <= 0 else age
    return {
        "in_recovery": in_recovery,
        "replay_paused": paused,
        "bytes_behind": max(behind, 0) if behind is not None else None,
        "lag_seconds": round(lag, 3) if lag is not None else None,
    }


def replica_findings(replicas: list[dict[str, Any]], max_lag: float) -> list[Finding]:
    """A finding for each replica that needs action."""
    found: list[Finding] = []
    for replica in replicas:
        url = replica["url"]
        if not replica["reachable"]:
            found.append(
                Finding(
                    "replica_unreachable",
                    f"read replica {url} cannot be reached ({replica['error']})",
                    "readonly units of work fall back to the other replicas or the primary, "
                    "which then carries their load; bring it back or remove it from "
                    "UOW_REPLICA_URLS",
                    action=True,
                )
            )
            continue
        if not replica["in_recovery"]:
            found.append(
                Finding(
                    "replica_not_in_recovery",
                    f"read replica {url} is not in recovery: it is a primary, not a standby",
                    "readonly units of work read from it; after a failover, update "
                    "DATABASE_URL and UOW_REPLICA_URLS",
                    action=True,
                )
            )
            continue
        lag = replica["lag_seconds"]
        if lag is not None and lag > max_lag:
            paused = " (replay is paused)" if replica["replay_paused"] else ""
            found.append(
                Finding(
                    "replica_lag",
                    f"read replica {url} lags {lag:.1f} s behind the primary{paused}, "
                    f"{replica['bytes_behind']} bytes of WAL (threshold {max_lag:g} s)",
                    "readonly units of work there read data that old; look at the "
                    "replica's load, its network and long queries conflicting with replay, "
                    "or read from the primary (UnitOfWork(readonly=True, replica=False))",
                    action=True,
                )
            )
        budget = replica["budget"]
        if budget["exceeded"]:
            found.append(
                Finding(
                    "replica_budget_exceeded",
                    f"connection budget exceeded on read replica {url}: {budget['needed']} "
                    f"needed, {budget['available']} available",
                    "each process opens a pool per replica too: lower UOW_POOL_SIZE, run "
                    "fewer processes or raise the replica's max_connections",
                    action=True,
                )
            )
    return found


def replication_tables(
    replication: list[dict[str, Any]], replicas: list[dict[str, Any]]
) -> list[tuple[str, list[str], list[list[Any]]]]:
    """(title, headers, rows) of the text report's replication tables."""
    tables = [
        (
            "Replication (standbys streaming from this server)",
            ["application_name", "client", "state", *_LAGS, "bytes_behind"],
            [
                [
                    r["application_name"],
                    r["client_addr"],
                    r["state"],
                    *(_seconds(r[k]) for k in _LAGS),
                    r["bytes_behind"],
                ]
                for r in replication
            ],
        )
    ]
    if replicas:
        rows = [
            [
                r["url"],
                ("in recovery" if r["in_recovery"] else "PRIMARY") if r["reachable"] else "DOWN",
                _seconds(r.get("lag_seconds")),
                r.get("bytes_behind"),
                "yes" if r.get("replay_paused") else None,
            ]
            for r in replicas
        ]
        tables.append(
            (
                "Read replicas (UOW_REPLICA_URLS)",
                ["url", "state", "lag", "bytes_behind", "replay_paused"],
                rows,
            )
        )
    return tables


def _seconds(value: float | None) -> str | None:
    return None if value is None else f"{value:.3f} s"
