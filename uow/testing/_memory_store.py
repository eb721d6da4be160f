"""The in-memory store behind the fake unit of work, and how it emulates PostgreSQL.

:class:`InMemoryStore` keeps mapped objects by model and primary key. This module also
reads what it needs from each mapper (:class:`_Schema`), raises what PostgreSQL raises
for NOT NULL and unique violations, fills in column defaults, snapshots the data for
rollback, and compiles SQL criteria into Python functions with SQLAlchemy's ORM
evaluator. The repository and unit of work built on it live in ``_memory``.
"""

from __future__ import annotations

import copy
import datetime
import decimal
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import psycopg.errors
from sqlalchemy import Column, Table, UniqueConstraint, inspect
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Mapper
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.evaluator import UnevaluatableError, _EvaluatorCompiler
from sqlalchemy.sql import false, true
from sqlalchemy.sql.elements import ClauseElement

from .._errors import UsageError
from .._jobs import DeferredJob

if TYPE_CHECKING:
    from ._memory import FakeUnitOfWork

__all__ = ["InMemoryStore"]

Evaluator = Callable[[Any], Any]
_Snapshot = dict[type[Any], list[tuple[Any, dict[str, Any]]]]  # model -> [(object, values)]
_IMMUTABLE = (str, int, float, bytes, decimal.Decimal, datetime.date, datetime.time,
              datetime.timedelta, uuid.UUID, type(None))  # fmt: skip


@dataclass(frozen=True)
class _Schema:
    """What the store needs to know about a mapped class, read once from its mapper."""

    mapper: Mapper[Any]
    table: str
    columns: tuple[str, ...]  # the column attributes' keys
    primary_key: tuple[str, ...]
    sequence: str | None  # the key PostgreSQL fills from a sequence (SERIAL, IDENTITY)
    defaults: dict[str, Any]  # key -> the column's Python-side default
    not_null: tuple[str, ...]  # NOT NULL keys the server would not fill in itself
    unique: tuple[tuple[str, tuple[str, ...]], ...]  # (constraint, keys), primary key first

    def values(self, obj: Any, keys: Sequence[str] | None = None) -> tuple[Any, ...]:
        return tuple(getattr(obj, key) for key in (self.primary_key if keys is None else keys))


_schemas: dict[type[Any], _Schema] = {}


def _schema(model: type[Any]) -> _Schema:
    found = _schemas.get(model)
    if found is None:
        found = _schemas[model] = _read_schema(model)
    return found


def _read_schema(model: type[Any]) -> _Schema:
    mapper: Mapper[Any] = inspect(model)
    table = mapper.local_table
    if not isinstance(table, Table):
        raise UsageError(f"{model.__name__} is not mapped to a table; the fake cannot store it")
    key_of: dict[Any, str] = {prop.columns[0]: prop.key for prop in mapper.column_attrs}
    columns = {key: col for col, key in key_of.items() if isinstance(col, Column)}
    primary_key = tuple(key_of[col] for col in mapper.primary_key)
    unique = [(str(table.primary_key.name or f"{table.name}_pkey"), primary_key)]
    for constraint in table.constraints:
        if isinstance(constraint, UniqueConstraint) and all(
            c in key_of for c in constraint.columns
        ):
            keys = tuple(key_of[col] for col in constraint.columns)
            unique.append((str(constraint.name or f"{table.name}_{'_'.join(keys)}_key"), keys))
    for index in table.indexes:  # unique indexes on expressions (lower(name)) are skipped
        if index.unique and all(col in key_of for col in index.expressions):
            unique.append((str(index.name), tuple(key_of[col] for col in index.columns)))
    auto = table.autoincrement_column
    return _Schema(
        mapper=mapper,
        table=table.name,
        columns=tuple(columns),
        primary_key=primary_key,
        sequence=key_of.get(auto) if auto is not None else None,
        defaults={k: c.default for k, c in columns.items() if c.default is not None},
        not_null=tuple(k for k, c in columns.items() if not (c.nullable or c.server_default)),
        unique=tuple(unique),
    )


def _db_error(
    kind: type[sa_exc.DBAPIError], pg_error: type[psycopg.Error], message: str
) -> sa_exc.DBAPIError:
    """What SQLAlchemy raises for this PostgreSQL error, so code under test catches it alike."""
    return kind("(in-memory fake)", None, pg_error(message))


def _check(schema: _Schema, objs: Iterable[Any]) -> None:
    """Raise what PostgreSQL raises for NOT NULL and unique violations among ``objs``."""
    seen: list[dict[tuple[Any, ...], Any]] = [{} for _ in schema.unique]
    for obj in objs:
        for key in schema.not_null:
            if getattr(obj, key) is None:
                message = f'null value in column "{key}" of relation "{schema.table}"'
                raise _db_error(
                    sa_exc.IntegrityError,
                    psycopg.errors.NotNullViolation,
                    f"{message} violates not-null constraint",
                )
        for (name, keys), index in zip(schema.unique, seen, strict=True):
            values = schema.values(obj, keys)
            # NULLs are distinct in a unique constraint.
            if None not in values and index.setdefault(values, obj) is not obj:
                detail = f"Key ({', '.join(keys)})=({', '.join(map(str, values))}) already exists."
                raise _db_error(
                    sa_exc.IntegrityError,
                    psycopg.errors.UniqueViolation,
                    f'duplicate key value violates unique constraint "{name}"\nDETAIL:  {detail}',
                )


def _default(schema: _Schema, key: str, default: Any) -> Any:
    if default.is_scalar:
        return default.arg
    if default.is_callable:
        try:
            return default.arg(None)  # SQLAlchemy wraps a zero-argument callable to take a context
        except Exception as exc:
            raise UsageError(
                f"{schema.mapper.class_.__name__}.{key}: its default needs SQLAlchemy's execution "
                "context, which the in-memory fake does not have; set the attribute explicitly"
            ) from exc
    return None  # a SQL expression: only the server could compute it


def _copied(value: Any) -> Any:
    # Rollback must undo in-place changes to lists and dicts (JSON) too, as a reload would.
    return value if isinstance(value, _IMMUTABLE) else copy.deepcopy(value)


class InMemoryStore:
    """The data behind in-memory repositories: mapped objects by model and primary key.

    Share one store between fakes (``fake(Shop, store=store)``) to let them see the
    same data, one unit at a time: there is no isolation between units. Integer keys
    come from per-model counters that, like PostgreSQL sequences, are not rolled back.
    Not thread-safe.

    Attributes:
        jobs: the jobs committed units deferred (:class:`uow.testing.DeferredJob`), in
            order; job ids, like keys, are not reused after a rollback.
    """

    def __init__(self) -> None:
        """Create an empty store."""
        self.jobs: list[DeferredJob] = []
        self._job_ids = 0
        self._tables: dict[type[Any], dict[tuple[Any, ...], Any]] = {}
        self._pending: dict[int, tuple[type[Any], Any]] = {}  # id() -> added, not yet inserted
        self._sequences: dict[type[Any], int] = {}
        self._active: FakeUnitOfWork | None = None

    def __repr__(self) -> str:
        counts = ", ".join(f"{m.__name__}: {len(rows)}" for m, rows in self._tables.items())
        return f"<InMemoryStore {{{counts}}}>"

    def _rows(self, model: type[Any]) -> dict[tuple[Any, ...], Any]:
        return self._tables.setdefault(model, {})

    def _flush(self) -> None:
        """Insert the added objects, as the session's autoflush does before a query."""
        pending, self._pending = list(self._pending.values()), {}
        for model in dict.fromkeys(model for model, _ in pending):
            self._insert(model, [obj for m, obj in pending if m is model])

    def _insert(self, model: type[Any], objs: list[Any]) -> None:
        schema, rows = _schema(model), self._rows(model)
        for obj in objs:
            for key, default in schema.defaults.items():
                if getattr(obj, key) is None:  # None is left out of an ORM INSERT: defaults fire
                    set_committed_value(obj, key, _default(schema, key, default))
            if schema.sequence and getattr(obj, schema.sequence) is None:
                self._sequences[model] = self._sequences.get(model, 0) + 1
                set_committed_value(obj, schema.sequence, self._sequences[model])
        _check(schema, [*rows.values(), *objs])
        rows.update((schema.values(obj), obj) for obj in objs)

    def _validate(self) -> None:
        """Check every table and re-key it: changes to stored objects are only seen here."""
        for model, rows in self._tables.items():
            schema = _schema(model)
            _check(schema, rows.values())
            self._tables[model] = {schema.values(obj): obj for obj in rows.values()}

    def _snapshot(self) -> _Snapshot:
        return {
            model: [(obj, {k: _copied(getattr(obj, k)) for k in _schema(model).columns})
                    for obj in rows.values()]
            for model, rows in self._tables.items()
        }  # fmt: skip

    def _restore(self, snapshot: _Snapshot) -> None:
        self._pending, self._tables = {}, {}
        for model, saved in snapshot.items():
            schema, rows = _schema(model), self._rows(model)
            for obj, values in saved:
                for key, value in values.items():
                    set_committed_value(obj, key, _copied(value))
                rows[schema.values(obj)] = obj

    def _changed(self, since: _Snapshot) -> bool:
        def rows(snapshot: _Snapshot) -> Any:
            return {m: [(id(o), v) for o, v in saved] for m, saved in snapshot.items() if saved}

        return bool(self._pending) or rows(self._snapshot()) != rows(since)


# The criteria compiler: SQL expressions become functions of one stored object.


def _compile(model: type[Any], expression: Any, what: str) -> Evaluator:
    """Compile a SQL expression into a function of one object, as ``evaluate`` sync does."""
    element = getattr(expression, "__clause_element__", lambda: expression)()
    if isinstance(element, bool):
        element = true() if element else false()
    if not isinstance(element, ClauseElement):
        raise UsageError(f"{what} {expression!r} is not a SQL expression the fake can evaluate")
    try:
        return cast(Evaluator, _EvaluatorCompiler(model).process(element))  # type: ignore[no-untyped-call]
    except UnevaluatableError as exc:
        raise UsageError(
            f"the in-memory fake cannot evaluate {what} {element} ({exc}); it evaluates "
            "comparisons, in_(), is_(None), and_/or_/not_, startswith/endswith and arithmetic "
            "on this model's attributes. Test this query against PostgreSQL instead."
        ) from exc


def _setter(model: type[Any], value: Any) -> Evaluator:
    if isinstance(value, ClauseElement) or hasattr(value, "__clause_element__"):
        return _compile(model, value, "the value")
    return lambda _obj: value


def _sort_key(value_of: Evaluator, nulls_high: bool, obj: Any) -> tuple[bool, Any]:
    value = value_of(obj)
    return (value is None if nulls_high else value is not None), value
