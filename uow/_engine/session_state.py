"""Warnings for statements that keep session state, which PgBouncer's transaction mode breaks.

In transaction mode a client holds a server connection only for one transaction; the
next one may run on another server connection. State that outlives the transaction
(``LISTEN``, session advisory locks, ``SET`` without ``LOCAL``, ``PREPARE``, cursors
``WITH HOLD``, temporary tables) is left on a connection another client gets next, and is
missing where this client goes.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
from typing import Any

from sqlalchemy import Engine, event

__all__ = ["install_session_state_warnings", "session_state_problem"]

logger = logging.getLogger("uow")

_COMMENTS = re.compile(r"/\*.*?\*/|--[^\n]*", re.DOTALL)
_RULES = (
    (
        re.compile(r"^\s*(UN)?LISTEN\b", re.IGNORECASE),
        "LISTEN/UNLISTEN: notifications go to whichever client holds the server connection; "
        "listen on a dedicated direct connection instead",
    ),
    (
        re.compile(r"\bpg_(try_)?advisory_(un)?lock(_shared)?\s*\(", re.IGNORECASE),
        "a session advisory lock stays held on the server connection after the transaction; "
        "use pg_advisory_xact_lock(), released at commit",
    ),
    (
        re.compile(r"^\s*SET\s+(?!LOCAL\b|TRANSACTION\b|CONSTRAINTS\b)", re.IGNORECASE),
        "SET without LOCAL changes the server connection for the next client; use SET LOCAL "
        "or set_config(name, value, true)",
    ),
    (
        re.compile(r"^\s*(PREPARE|DEALLOCATE)\b", re.IGNORECASE),
        "a prepared statement lives on one server connection; the next transaction may not find it",
    ),
    (
        re.compile(r"\bWITH\s+HOLD\b", re.IGNORECASE),
        "a cursor WITH HOLD outlives the transaction on a server connection this client loses",
    ),
    (
        re.compile(
            r"^\s*CREATE\s+(GLOBAL\s+|LOCAL\s+)?TEMP(ORARY)?\s+TABLE\b(?!.*\bON\s+COMMIT\s+DROP\b)",
            re.IGNORECASE | re.DOTALL,
        ),
        "a temporary table lives on one server connection; create it ON COMMIT DROP",
    ),
)


@functools.lru_cache(maxsize=2048)
def session_state_problem(statement: str) -> str | None:
    """Why ``statement`` breaks under PgBouncer's transaction mode, or None if it does not."""
    bare = _COMMENTS.sub(" ", statement)
    for pattern, reason in _RULES:
        if pattern.search(bare):
            return reason
    return None


def install_session_state_warnings(engine: Engine) -> None:
    """Log a warning, once per statement, for session state sent through ``engine``."""
    warned: set[str] = set()
    lock = threading.Lock()

    @event.listens_for(engine, "before_cursor_execute")
    def _check(connection: Any, cursor: Any, statement: str, *args: Any) -> None:
        # The cache makes this one dict lookup for statements seen before.
        reason = session_state_problem(statement)
        if reason is None:
            return
        with lock:
            if statement in warned:
                return
            warned.add(statement)
        logger.warning(
            "behind PgBouncer in transaction mode (UOW_PGBOUNCER=transaction): %s. "
            "Statement: %.200s",
            reason,
            statement,
        )
