"""Is the database's schema the one this code needs? A check cheap enough for ``/health``.

alembic records the revision a database is at in ``alembic_version``; the code's own
revision is the head of ``migrations/``, read from disk once. The check is two small
queries in the health probe's own transaction: no alembic machinery per probe.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Literal

from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from uow import Database, DatabaseUnavailable, PoolExhausted, StatementTimeout, UnitOfWork

__all__ = ["MIGRATE_HINT", "MIGRATIONS", "SchemaCheck", "State", "probe"]

logger = logging.getLogger("examples.bank.health")

State = Literal["ok", "overloaded", "unavailable", "not migrated"]

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"
MIGRATE_HINT = "run `python -m examples.bank migrate` first"

# has_table_privilege is NULL for a missing table, so one query tells both facts apart.
_VERSION_TABLE = text(
    "SELECT to_regclass('alembic_version') IS NOT NULL,"
    " coalesce(has_table_privilege(to_regclass('alembic_version'), 'SELECT'), false)"
)


class SchemaCheck:
    """Compares a database's alembic revision with the head of ``migrations``.

    Thread-safe: the head is read once, under a lock, then only read.
    """

    def __init__(self, script_location: Path = MIGRATIONS) -> None:
        self._location = script_location
        self._heads: frozenset[str] | None = None
        self._lock = threading.Lock()

    def heads(self) -> frozenset[str]:
        """The revisions this code expects, read from ``migrations/`` on first use."""
        with self._lock:
            if self._heads is None:
                # Imported here: the CLI takes MIGRATE_HINT from this module, alembic unneeded.
                from alembic.script import ScriptDirectory  # noqa: PLC0415

                self._heads = frozenset(ScriptDirectory(str(self._location)).get_heads())
            return self._heads

    def problem(self, session: Session) -> str | None:
        """What is wrong with the schema, in one line; ``None`` when it is at the head."""
        present, readable = session.execute(_VERSION_TABLE).one()
        if not present:
            return f"the database schema is not migrated; {MIGRATE_HINT}"
        if not readable:
            # A role without SELECT on alembic_version cannot tell; the tables will say.
            return None
        current = frozenset(session.scalars(text("SELECT version_num FROM alembic_version")))
        expected = self.heads()
        if current == expected:
            return None
        return (
            f"the database schema is at revision {', '.join(sorted(current)) or 'none'},"
            f" this code needs {', '.join(sorted(expected))}; {MIGRATE_HINT}"
        )


def probe(database: Database, schema: SchemaCheck) -> tuple[State, str | None]:
    """The database's state for ``/health`` and, when not migrated, what to run."""
    try:
        with UnitOfWork(database, readonly=True) as unit:
            reason = schema.problem(unit.session)
    except PoolExhausted as exc:
        logger.warning("health check: %s", exc)
        return "overloaded", None
    except (DatabaseUnavailable, StatementTimeout, OperationalError) as exc:
        logger.warning("health check: %s", exc)
        return "unavailable", None
    if reason is not None:
        logger.error("health check: %s", reason)
        return "not migrated", reason
    return "ok", None
