"""Bulk loads through PostgreSQL's COPY, when that gives exactly what an INSERT would.

COPY is the fastest way to load rows, but it bypasses SQLAlchemy's per-type value
processing and its Python-side defaults. A plan is made only when neither matters: a
plain single-table mapping, and columns whose types need no bind processing, whose
omitted columns have no default or a constant one (filled in here, as the ORM would).
Otherwise :meth:`Repository.insert_many` falls back to multi-row INSERTs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import Connection, Table
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Mapper

__all__ = ["CopyPlan", "copy_plan"]


@dataclass(frozen=True)
class CopyPlan:
    """How to COPY rows that have exactly ``keys``: which columns, and constants to add."""

    statement: sql.Composed
    keys: tuple[str, ...]  # attribute names, in column order
    constants: tuple[Any, ...]  # values of the omitted columns that have constant defaults

    def run(self, connection: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        """COPY ``rows`` on the session's connection, inside its transaction."""
        driver = connection.connection.driver_connection
        assert isinstance(driver, psycopg.Connection)
        keys, constants = self.keys, self.constants
        try:
            with driver.cursor() as cursor, cursor.copy(self.statement) as copy:
                for row in rows:
                    copy.write_row([*(row[key] for key in keys), *constants])
        except psycopg.Error as exc:
            # Through SQLAlchemy's own error path, as for any statement it runs: the
            # same exception classes (IntegrityError, ...), uow's handle_error mapping
            # (ConnectionLost, ...) and invalidation of a dead connection.
            text = self.statement.as_string(driver)
            connection._handle_dbapi_exception(exc, text, None, None, None)


def copy_plan(mapper: Mapper[Any], dialect: Dialect, keys: frozenset[str]) -> CopyPlan | None:
    """A plan for COPYing rows with these attribute keys, or None if COPY would differ."""
    if dialect.name != "postgresql" or dialect.driver != "psycopg" or dialect.is_async:
        return None  # the asyncio driver's COPY would need awaiting: plain INSERTs there
    return _plan(mapper, dialect, keys)


@cache
def _plan(mapper: Mapper[Any], dialect: Dialect, keys: frozenset[str]) -> CopyPlan | None:
    table = mapper.local_table
    if mapper.inherits is not None or not isinstance(table, Table):
        return None
    given: list[tuple[str, str]] = []
    constant_columns: list[str] = []
    constants: list[Any] = []
    for key, column in mapper.columns.items():
        if column.table is not table:
            return None
        if column.type._cached_bind_processor(dialect) is not None:
            return None  # e.g. JSON, Enum: values need SQLAlchemy's processing
        if key in keys:
            given.append((key, column.name))
        elif column.default is not None:
            if not column.default.is_scalar:
                return None  # a callable or SQL default: the ORM evaluates it per row
            constant_columns.append(column.name)
            constants.append(column.default.arg)  # type: ignore[attr-defined]
        # else: the server's default (a sequence, server_default, NULL) applies
    target = (
        sql.Identifier(table.schema, table.name) if table.schema else sql.Identifier(table.name)
    )
    names = [name for _, name in given] + constant_columns
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
        target, sql.SQL(", ").join(sql.Identifier(name) for name in names)
    )
    return CopyPlan(statement, tuple(key for key, _ in given), tuple(constants))
