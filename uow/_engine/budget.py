"""The connection budget: will every process's pool fit in the server's max_connections?

Many workers, each with its own pool, easily add up to more connections than the
server accepts, and the failure shows only under load, as ``too many clients``. uow
checks the sum once, on its first connection, against what the server reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .._errors import ConfigurationError
from .._settings import Settings

__all__ = ["Budget", "read_budget"]

_QUERY = """
SELECT current_setting('max_connections')::int,
       current_setting('superuser_reserved_connections')::int,
       coalesce(current_setting('reserved_connections', true), '0')::int,
       (SELECT count(*) FROM pg_stat_activity
         WHERE backend_type = 'client backend' AND application_name <> %s)::int
"""


@dataclass(frozen=True)
class Budget:
    """What the server allows and what this application asks for."""

    max_connections: int
    reserved: int
    """Slots kept for superusers and roles with pg_use_reserved_connections."""
    used_by_others: int
    """Client connections of other applications right now."""
    processes: int
    per_process: int
    """pool_size + max_overflow."""
    server: str = ""
    """The server's URL, password masked, for messages."""

    @property
    def needed(self) -> int:
        return self.processes * self.per_process

    @property
    def available(self) -> int:
        return self.max_connections - self.reserved - self.used_by_others

    def check(self) -> None:
        """Raise ConfigurationError if the pools cannot all be open at once."""
        if self.needed <= self.available:
            return
        where = f" on {self.server}" if self.server else ""
        raise ConfigurationError(
            f"connection budget exceeded{where}: {self.processes} processes x (pool_size + "
            f"max_overflow = {self.per_process}) = {self.needed} connections, but the server "
            f"allows {self.max_connections} (max_connections) - {self.reserved} reserved - "
            f"{self.used_by_others} used by other applications = {self.available}. Lower "
            "UOW_POOL_SIZE or UOW_MAX_OVERFLOW, run fewer processes, raise max_connections, "
            "or put PgBouncer in front. (UOW_PROCESSES tells uow how many processes share "
            "the budget; UOW_CHECK_BUDGET=false turns this check off.)"
        )


def read_budget(dbapi_connection: Any, settings: Settings) -> Budget:
    """Ask the server, on a raw driver connection, for the numbers of the budget."""
    # A plain cursor works on the sync driver and on SQLAlchemy's asyncio adapter alike.
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(_QUERY, (settings.application_name,))
        max_connections, superuser, reserved, others = cursor.fetchone()
    finally:
        cursor.close()
        dbapi_connection.rollback()  # leave the new connection idle, not in a transaction
    return Budget(
        max_connections=max_connections,
        reserved=superuser + reserved,
        used_by_others=others,
        processes=settings.processes,
        per_process=settings.pool_size + settings.max_overflow,
        server=settings.masked_url,
    )
