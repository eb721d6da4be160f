"""What a server's client sessions are doing: read for ``uow doctor`` and ``uow top``.

Reads ``pg_stat_activity`` and ``pg_stat_database`` on a psycopg connection, and lays
the result out as plain-text tables. Text that comes from the server (other sessions'
queries, application names, database names, error messages) is shown through
:func:`printable`, so that a query comment holding terminal escape sequences cannot
rewrite the operator's terminal.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from .._engine.budget import process_kind
from .terminal import printable

__all__ = ["Activity", "ServerSession", "collect_activity", "render_activity", "table"]

_TOP = 5
_QUERY_CHARS = 60
# A statement that sets a password (ALTER ROLE ... PASSWORD '...') must not be echoed.
_PASSWORD = re.compile(r"password", re.IGNORECASE)

_BY_APPLICATION = """
SELECT application_name, coalesce(state, 'unknown'), count(*)::int
  FROM pg_stat_activity
 WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
 GROUP BY 1, 2
 ORDER BY 1, 2
"""
_IDLE_IN_TRANSACTION = """
SELECT pid, application_name,
       extract(epoch FROM clock_timestamp() - state_change)::float8, query
  FROM pg_stat_activity
 WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
   AND state LIKE 'idle in transaction%%'
 ORDER BY 3 DESC
"""
_LONGEST_TRANSACTIONS = """
SELECT pid, application_name,
       extract(epoch FROM clock_timestamp() - xact_start)::float8, query
  FROM pg_stat_activity
 WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
   AND xact_start IS NOT NULL
 ORDER BY 3 DESC
 LIMIT %s
"""
_LONGEST_QUERIES = """
SELECT pid, application_name,
       extract(epoch FROM clock_timestamp() - query_start)::float8, query
  FROM pg_stat_activity
 WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
   AND state = 'active' AND query_start IS NOT NULL
 ORDER BY 3 DESC
 LIMIT %s
"""
_TRANSACTIONS = """
SELECT xact_commit, xact_rollback
  FROM pg_stat_database
 WHERE datname = current_database()
"""


@dataclass(frozen=True)
class ServerSession:
    """One server session: who holds it, for how long, doing what."""

    pid: int
    application_name: str
    seconds: float
    query: str


@dataclass(frozen=True)
class Activity:
    """What the server's client sessions are doing at one moment (``doctor`` and ``top``)."""

    taken_at: float
    """``time.monotonic()`` when it was read."""
    database: str
    """The current database, which the transaction counters are for."""
    connections: list[dict[str, Any]]
    """``{"application_name", "kind", "state", "count"}`` per application and state; kind is
    ``"web worker"``, ``"job worker"`` (``uow.jobs``) or ``""`` (not uow's)."""
    idle_in_transaction: list[ServerSession]
    longest_transactions: list[ServerSession]
    longest_queries: list[ServerSession]
    xact_commit: int
    """Transactions committed in this database since its statistics were reset."""
    xact_rollback: int
    """Transactions rolled back in this database since its statistics were reset."""


def collect_activity(raw: Any) -> Activity:
    """Read who holds connections and what they run, on a psycopg connection.

    Five short queries in one transaction, which is rolled back: it ends the
    statistics snapshot PostgreSQL keeps per transaction, so the next call sees new
    counters.
    """
    cursor = raw.cursor()
    try:
        cursor.execute(_BY_APPLICATION)
        connections = [
            {"application_name": app, "kind": process_kind(app), "state": state, "count": count}
            for app, state, count in cursor.fetchall()
        ]
        cursor.execute(_IDLE_IN_TRANSACTION)
        idle = [_session(row) for row in cursor.fetchall()]
        cursor.execute(_LONGEST_TRANSACTIONS, (_TOP,))
        transactions = [_session(row) for row in cursor.fetchall()]
        cursor.execute(_LONGEST_QUERIES, (_TOP,))
        queries = [_session(row) for row in cursor.fetchall()]
        cursor.execute(_TRANSACTIONS)
        commits, rollbacks = cursor.fetchone() or (0, 0)
        taken_at = time.monotonic()
    finally:
        cursor.close()
        raw.rollback()
    return Activity(
        taken_at=taken_at,
        database=raw.info.dbname,
        connections=connections,
        idle_in_transaction=idle,
        longest_transactions=transactions,
        longest_queries=queries,
        xact_commit=int(commits or 0),
        xact_rollback=int(rollbacks or 0),
    )


def _session(row: tuple[Any, ...]) -> ServerSession:
    pid, app, seconds, query = row
    text = " ".join((query or "").split())
    if _PASSWORD.search(text):
        text = "<hidden: mentions a password>"
    return ServerSession(
        pid=int(pid),
        application_name=app or "",
        seconds=round(float(seconds or 0.0), 3),
        query=text[:_QUERY_CHARS],
    )


def render_activity(
    connections: list[dict[str, Any]],
    idle_in_transaction: list[ServerSession],
    longest_transactions: list[ServerSession],
    longest_queries: list[ServerSession],
) -> list[str]:
    """The connections and session tables, as lines (``doctor`` and ``top``)."""
    lines = [
        "Connections (client backends, excluding this one)",
        *table(
            ["application_name", "kind", "state", "count"],
            [[c["application_name"], c["kind"], c["state"], c["count"]] for c in connections],
        ),
        "",
    ]
    for title, sessions in (
        ("Idle in transaction", idle_in_transaction),
        (f"Longest open transactions (top {_TOP})", longest_transactions),
        (f"Longest running queries (top {_TOP})", longest_queries),
    ):
        rows = [[s.pid, s.application_name, f"{s.seconds:.1f} s", s.query] for s in sessions]
        lines += [title, *table(["pid", "application", "duration", "query"], rows), ""]
    return lines


def table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    """Rows under headers, columns padded, indented two spaces; "(none)" when empty."""
    if not rows:
        return ["  (none)"]
    cells = [[_cell(v) for v in row] for row in [headers, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        return "  " + "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()

    return [line(cells[0]), line(["-" * w for w in widths]), *(line(row) for row in cells[1:])]


def _cell(value: Any) -> str:
    return "-" if value is None or value == "" else printable(str(value))
