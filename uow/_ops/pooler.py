"""Find out whether a URL leads to PgBouncer and in which ``pool_mode``, for ``uow doctor``.

PgBouncer answers like PostgreSQL; only its admin console (the virtual database
``pgbouncer``, open to users in ``admin_users`` or ``stats_users``) tells its settings.

The console is asked only when the doctor's own connection suggests PgBouncer, or when
``UOW_PGBOUNCER`` says it is there: on plain PostgreSQL every attempt would leave
``FATAL: database "pgbouncer" does not exist`` in the server's log. The signal costs no
round trip: PgBouncer hands each client a backend key of its own (a random process id,
PgBouncer 1.18 included), so the process id the connection was given at startup differs
from the ``pg_backend_pid()`` the server reports; PostgreSQL's are equal.

The console connection is a side connection: it is opened with every libpq parameter the
application's connections use (TLS, host lists, sockets, ``passfile``...), only the
database name changed (:func:`side_connect_args`), so the password never travels over a
weaker connection than the application's.

Without console access the one hint left is the port: the server reports the port it
listens on, which differs from the port the connection reached (``conn.info.port``, the
one libpq chose among the URL's hosts) when something sits in between.
"""

from __future__ import annotations

from typing import Any

import psycopg

from .._conninfo import connect_kwargs, hosts
from .._settings import Settings
from .report import Finding

__all__ = ["detect", "findings", "side_connect_args"]

_CONSOLE_TIMEOUT = 3


def side_connect_args(settings: Settings, **changes: Any) -> dict[str, Any]:
    """Keyword arguments for ``psycopg.connect()`` that reach the server as the application does.

    The application's own libpq parameters (:func:`uow._conninfo.connect_kwargs`: the URL's
    TLS settings, host lists, socket directories, ``target_session_attrs``..., then the
    ``connect_args`` of ``engine_options``), without ``options``, which PgBouncer's console
    refuses and which only carry session settings, nothing that protects the login; then
    ``changes`` (``dbname="pgbouncer"``).
    """
    # pgbouncer="transaction": no server timeouts in the startup packet, no prepared
    # statements (the console speaks the simple query protocol only).
    params = connect_kwargs(settings.replace(pgbouncer="transaction"))
    params.pop("options", None)
    params.pop("prepare_threshold", None)
    params["connect_timeout"] = _CONSOLE_TIMEOUT
    params.update(changes)
    return params


def detect(
    settings: Settings, reached: tuple[str, int], server_port: int | None, *, pooled: bool
) -> dict[str, Any]:
    """Describe what the URL leads to.

    Args:
        settings: The application's settings (URL and ``pgbouncer``).
        reached: The host and port the doctor's connection reached (``conn.info``): with
            several hosts in the URL, the one libpq chose.
        server_port: ``inet_server_port()`` as the server reported it (None on a socket).
        pooled: The connection's startup process id differs from ``pg_backend_pid()``,
            as behind PgBouncer; with ``settings.pgbouncer`` "off" and this false, the
            console is not asked.

    Returns:
        ``{"detected": True, "via": "console", "version", "pool_mode",
        "max_prepared_statements", "default_pool_size", "max_client_conn"}`` when the
        console answered; else ``{"detected": None, "via": "port", ...}`` when the port
        reached differs from the server's (a proxy of some kind), or ``{"detected": False}``.
    """
    port = reached[1]
    if not pooled and settings.pgbouncer == "off":
        return _port_hint(port, server_port)
    # The host reached, not the URL's list: with target_session_attrs, libpq would ask
    # each console whether it is read-only, which it cannot answer.
    params = side_connect_args(settings, dbname="pgbouncer", autocommit=True)
    params.update(_one_host(params, reached), target_session_attrs="any")
    params.pop("load_balance_hosts", None)
    try:
        with psycopg.connect(**params) as console:
            # The console speaks the simple query protocol only: no parameters, no prepare.
            config = {row[0]: row[1] for row in console.execute("SHOW CONFIG", prepare=False)}
            version_row = console.execute("SHOW VERSION", prepare=False).fetchone()
    except psycopg.Error:
        # Not PgBouncer (no such database), or a user without console rights.
        return _port_hint(port, server_port)
    return {
        "detected": True,
        "via": "console",
        "version": version_row[0] if version_row else None,
        "pool_mode": config.get("pool_mode"),
        # PgBouncer 1.21 added protocol-level prepared statements; before, there is none.
        "max_prepared_statements": int(config.get("max_prepared_statements", "0") or 0),
        "default_pool_size": int(config.get("default_pool_size", "0") or 0),
        "max_client_conn": int(config.get("max_client_conn", "0") or 0),
    }


def _one_host(params: dict[str, Any], reached: tuple[str, int]) -> dict[str, Any]:
    """``host``, ``port`` (and ``hostaddr``) of the one host reached among the URL's."""
    host, port = reached
    listed = hosts(params)
    found: dict[str, Any] = {"host": host, "port": str(port)}
    addresses = str(params.get("hostaddr") or "").split(",")
    if len(addresses) == len(listed) > 1:
        # libpq reports the host name as given; its address sits at the same position.
        names = [name for name, _ in listed]
        found["hostaddr"] = addresses[names.index(host)] if host in names else addresses[0]
    return found


def _port_hint(port: int, server_port: int | None) -> dict[str, Any]:
    # url_port: the port the connection reached, which is the URL's (one of its ports).
    if server_port is not None and server_port != port:
        return {"detected": None, "via": "port", "url_port": port, "server_port": server_port}
    return {"detected": False}


def findings(settings: Settings, found: dict[str, Any]) -> list[Finding]:
    """What needs action given what :func:`detect` found and the ``pgbouncer`` setting."""
    mode, setting, detected = found.get("pool_mode"), settings.pgbouncer, found.get("detected")
    if detected is None and setting == "off":
        return [
            Finding(
                "proxy_in_between",
                f"the server listens on port {found['server_port']} but the connection "
                f"reached port {found['url_port']}: a pooler or proxy sits in between",
                "if it is PgBouncer in transaction mode, set UOW_PGBOUNCER=transaction "
                "(prepared statements and session settings break there otherwise)",
                False,
            )
        ]
    if not detected:
        return [_not_confirmed(setting)] if setting != "off" else []
    if mode == "transaction" and setting != "transaction":
        return [_prepared_statements(setting, found["max_prepared_statements"])]
    rule = _MODE_RULES.get((mode, setting))
    return [rule] if rule else []


def _not_confirmed(setting: str) -> Finding:
    return Finding(
        "pgbouncer_not_confirmed",
        f"UOW_PGBOUNCER={setting}, but PgBouncer's console did not answer this user",
        "if the URL leads to PostgreSQL directly, unset UOW_PGBOUNCER (in transaction mode "
        "it costs a round trip per transaction); to let doctor check, add the user to "
        "PgBouncer's stats_users",
        False,
    )


def _prepared_statements(setting: str, max_prepared: int) -> Finding:
    problem = (
        "psycopg's prepared statements are on behind PgBouncer in transaction mode "
        f"(max_prepared_statements={max_prepared}): statements fail with 'prepared "
        "statement \"_pg3_N\" does not exist' or run another client's SQL"
        if max_prepared == 0
        else "session settings are sent behind PgBouncer in transaction mode"
    )
    return Finding(
        "prepared_statements_behind_pgbouncer",
        f"{problem} (UOW_PGBOUNCER={setting})",
        "set UOW_PGBOUNCER=transaction: prepared statements off, timeouts per transaction",
        True,
    )


_MODE_RULES: dict[tuple[str | None, str], Finding] = {
    ("session", "off"): Finding(
        "pgbouncer_session_mode",
        "the URL leads to PgBouncer in session mode, which refuses the startup options "
        "uow sends for its timeouts",
        "set UOW_PGBOUNCER=session",
        True,
    ),
    ("session", "transaction"): Finding(
        "pgbouncer_mode_mismatch",
        "UOW_PGBOUNCER=transaction, but PgBouncer runs in session mode",
        "set UOW_PGBOUNCER=session to save a round trip per transaction",
        False,
    ),
    **{
        ("statement", setting): Finding(
            "pgbouncer_statement_mode",
            "PgBouncer runs in statement mode, which forbids multi-statement transactions",
            "use pool_mode = transaction for this database in pgbouncer.ini",
            True,
        )
        for setting in ("off", "session", "transaction")
    },
}
