"""``uow doctor``'s hosts part: each host of the URL, its role, whether it answers, its lag.

With several hosts in the URL (``h1:p1,h2:p2``, ``?host=h1,h2&port=p1,p2`` or repeated
``host=``), each gets one short side connection of its own (the URL's TLS settings and
uow's defaults, this host only, ``target_session_attrs=any``), so that a standby, a
read-only primary or a dead host shows as what it is. The connections stay open until
every host has been read: standbys are measured against the primary's WAL position read
just before. With one host, the doctor's own connection is read instead.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

from .._conninfo import connect_kwargs, hosts, user_parameters
from .._engine.classify import first_line, hide_secrets
from .._settings import Settings
from .doctor_replicas import read_replica, read_replication
from .report import Finding

__all__ = [
    "host_findings",
    "host_rows",
    "lag_findings",
    "read_hosts",
    "read_role",
    "target_session_attrs",
]

# Short: a black-holed host costs the doctor this long (libpq counts 1 as 2).
PROBE_TIMEOUT = 3
# The same server may be listed twice (two names, or a pooler and the server itself):
# its postmaster's start time, to the microsecond, tells one server from another.
_ROLE = """
SELECT pg_is_in_recovery(),
       current_setting('default_transaction_read_only'),
       current_setting('transaction_read_only'),
       CASE WHEN NOT pg_is_in_recovery() THEN pg_current_wal_lsn()::text END,
       pg_postmaster_start_time()::text
"""
_WRITABLE = frozenset({"read-write", "primary"})
_EMPTY = {
    "reachable": False,
    "error": None,
    "role": None,
    "in_recovery": None,
    "read_only": None,
    "in_hot_standby": None,
    "lag_seconds": None,
    "bytes_behind": None,
    "replay_paused": None,
    "standbys": None,
    "same_server_as": None,
}


def read_role(raw: Any) -> dict[str, Any]:
    """What one server is: ``primary``, ``standby`` or ``read-only primary``, and its WAL.

    Args:
        raw: A psycopg connection to that server (its transaction is ended here).
    """
    cursor = raw.cursor()
    try:
        cursor.execute(_ROLE)
        in_recovery, default_ro, transaction_ro, lsn, started = cursor.fetchone()
    finally:
        cursor.close()
        raw.rollback()
    read_only = "on" in (default_ro, transaction_ro)
    # A primary that refuses writes: default_transaction_read_only set on the server, the
    # role or the database.
    role = "standby" if in_recovery else "read-only primary" if read_only else "primary"
    return {
        "role": role,
        "in_recovery": bool(in_recovery),
        "read_only": read_only,
        # PostgreSQL 14+ reports it at login (None before): what libpq's
        # target_session_attrs reads without a query.
        "in_hot_standby": raw.info.parameter_status("in_hot_standby"),
        "_lsn": lsn,
        "_server": started,
    }


def read_hosts(
    settings: Settings, reached: tuple[str, int] | None, main: dict[str, Any]
) -> list[dict[str, Any]]:
    """Each host of the URL, in the order libpq tries them, and what it is.

    Args:
        settings: The application's settings.
        reached: The host and port the doctor's own connection reached; None when it
            could not connect (then only a URL with several hosts is read).
        main: What :func:`read_role` and the doctor read on that connection (its
            ``standbys`` and, on a standby, its lag), used when the URL has one host.

    Returns:
        One entry per host (``reachable``, ``error``, ``role``, ``lag_seconds``,
        ``bytes_behind``, ``standbys``...); every entry has every key.
    """
    listed = hosts(user_parameters(make_url(settings.url), settings.engine_options))
    if len(listed) == 1:
        if reached is None:
            return []
        entry = {**_EMPTY, **main, "host": reached[0], "port": str(reached[1])}
        entry.update(connected=True, reachable=True)
        return [_public(entry)]
    with contextlib.ExitStack() as stack:
        found: list[tuple[dict[str, Any], Any]] = []
        for index, (host, port) in enumerate(listed):
            entry = {**_EMPTY, "host": host, "port": port, "connected": False}
            if reached is not None:
                entry["connected"] = (host, port or str(reached[1])) == (
                    reached[0],
                    str(reached[1]),
                )
            raw = None
            try:
                raw = stack.enter_context(psycopg.connect(**_probe_args(settings, index)))
                entry.update(read_role(raw), reachable=True)
            except psycopg.Error as exc:
                entry["error"] = _error(exc, settings)
            found.append((entry, raw))
        _read_lags(settings, found)
    _mark_duplicates([entry for entry, _ in found])
    return [_public(entry) for entry, _ in found]


def _probe_args(settings: Settings, index: int) -> dict[str, Any]:
    """Every parameter of the URL (TLS, user, options), but its ``index``-th host only."""
    # No startup timeouts of uow's: PgBouncer in session mode would refuse them.
    kwargs = connect_kwargs(settings.replace(pgbouncer="transaction"))
    for key in ("host", "hostaddr", "port"):
        values = str(kwargs.get(key) or "").split(",")
        if key in kwargs and len(values) > 1:
            kwargs[key] = values[index]
    kwargs.update(autocommit=True, target_session_attrs="any")
    kwargs.pop("load_balance_hosts", None)
    timeout = int(kwargs.get("connect_timeout") or PROBE_TIMEOUT)
    kwargs["connect_timeout"] = min(timeout, PROBE_TIMEOUT)
    return kwargs


def _read_lags(settings: Settings, found: list[tuple[dict[str, Any], Any]]) -> None:
    """Standbys' lag against the primary's WAL position; the primaries' standbys."""
    primaries = [e for e, _ in found if e["role"] == "primary"]
    primaries.sort(key=lambda e: not e["connected"])  # the one the application uses first
    lsn = primaries[0]["_lsn"] if primaries else None
    for entry, raw in found:
        if not entry["reachable"]:
            continue
        try:
            if entry["in_recovery"]:
                entry.update(read_replica(raw, lsn))
            else:
                entry["standbys"] = read_replication(raw)
        except psycopg.Error as exc:  # gone since: report it as down
            entry.update(reachable=False, role=None, error=_error(exc, settings))


def _mark_duplicates(entries: list[dict[str, Any]]) -> None:
    seen: dict[str, str] = {}
    for entry in entries:
        server = entry.get("_server")
        if server is None:
            continue
        name = f"{entry['host']}:{entry['port']}"
        entry["same_server_as"] = seen.get(server)
        seen.setdefault(server, name)


def _public(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if not k.startswith("_")}


def _error(exc: psycopg.Error, settings: Settings) -> str:
    # libpq's connection messages name the host and user, never the password; hidden anyway.
    return f"{type(exc).__name__}: {hide_secrets(first_line(exc), settings)}"


def target_session_attrs(settings: Settings) -> str:
    """The ``target_session_attrs`` libpq uses: the URL's, else ``PGTARGETSESSIONATTRS``."""
    params = user_parameters(make_url(settings.url), settings.engine_options)
    value = params.get("target_session_attrs") or os.environ.get("PGTARGETSESSIONATTRS")
    return str(value or "any")


def host_findings(settings: Settings, entries: list[dict[str, Any]]) -> list[Finding]:
    """What needs action about the URL's hosts: none writable, several, or a bad choice."""
    found: list[Finding] = []
    several = len(entries) > 1
    down = [e for e in entries if not e["reachable"]]
    for entry in down:
        # Action, not exit code 2: the application works through another host, but the
        # URL has lost a failover target (or its primary) until this one is back.
        found.append(
            Finding(
                "host_unreachable",
                f"host {_name(entry)} of the URL cannot be reached ({entry['error']})",
                "libpq tries the next host, but a failover has one target fewer; bring it "
                "back, or remove it from the URL if it is gone for good",
                True,
            )
        )
    servers = [e for e in entries if e["reachable"] and not e["same_server_as"]]
    writable = [e for e in servers if e["role"] == "primary"]
    if not writable:
        states = ", ".join(f"{_name(e)} {e['role'] or 'unreachable'}" for e in entries)
        found.append(
            Finding(
                "no_writable_host",
                f"no host of the URL accepts writes ({states}): every unit of work that "
                "writes fails",
                "promote a standby or wait for the cluster manager's failover (patronictl "
                "list); on a read-only primary, reset default_transaction_read_only (ALTER "
                "SYSTEM, ALTER ROLE or ALTER DATABASE ... RESET); if this URL is meant for "
                "reads only, give it as UOW_REPLICA_URLS",
                True,
            )
        )
    elif len(writable) > 1:
        names = " and ".join(_name(e) for e in writable)
        found.append(
            Finding(
                "split_brain",
                f"split brain: {names} all accept writes; libpq writes to the first that "
                "answers, and what is written to the others diverges",
                "stop or demote all but one primary now (the cluster manager's fencing, "
                "pg_rewind), then check which writes went where",
                True,
            )
        )
    attrs = target_session_attrs(settings)
    if several and attrs not in _WRITABLE:
        found.append(
            Finding(
                "target_session_attrs_missing",
                f"the URL lists {len(entries)} hosts with target_session_attrs={attrs}: "
                "libpq connects to the first that answers, a standby included, and every "
                "write there fails",
                "add target_session_attrs=read-write to the URL",
                True,
            )
        )
    if several and attrs == "primary" and any(e["role"] == "read-only primary" for e in servers):
        found.append(
            Finding(
                "read_only_primary_chosen",
                "target_session_attrs=primary accepts a read-only primary, which the URL has",
                "use target_session_attrs=read-write: libpq then skips read-only servers",
                True,
            )
        )
    return found


def lag_findings(entries: list[dict[str, Any]], max_lag: float) -> list[Finding]:
    """Advice for each standby of the URL that lags more than ``max_lag`` seconds."""
    return [
        Finding(
            "host_lag",
            f"standby {_name(e)} of the URL lags {e['lag_seconds']:.1f} s behind the primary, "
            f"{e['bytes_behind']} bytes of WAL (threshold {max_lag:g} s)",
            "a failover to it waits for replay or, with asynchronous replication, loses the "
            "writes it has not received; look at its load, network and replay conflicts",
            False,
        )
        for e in entries
        if e["reachable"] and e["in_recovery"] and (e["lag_seconds"] or 0) > max_lag
    ]


def host_rows(entries: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """Headers and rows of the text report's hosts table."""
    headers = ["host", "port", "reachable", "role", "lag", "bytes_behind", "connected"]
    rows = []
    for e in entries:
        role = e["role"] or ""
        if e["same_server_as"]:
            role += f" (same server as {e['same_server_as']})"
        lag = None
        if e["in_recovery"] and e["lag_seconds"] is not None:
            lag = f"{e['lag_seconds']:.3f} s" + (" (paused)" if e["replay_paused"] else "")
        elif e["standbys"]:
            lags = [s["replay_lag"] or 0.0 for s in e["standbys"]]
            lag = f"{len(lags)} streaming, replay lag <= {max(lags):.3f} s"
        rows.append(
            [
                e["host"],
                e["port"],
                "yes" if e["reachable"] else "no",
                role,
                lag,
                e["bytes_behind"],
                "yes" if e["connected"] else "",
            ]
        )
    return headers, rows


def _name(entry: dict[str, Any]) -> str:
    return f"{entry['host'] or '(default)'}:{entry['port'] or '(default)'}"
