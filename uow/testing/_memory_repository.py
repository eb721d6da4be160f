"""InMemoryRepository: :class:`uow.Repository` over an :class:`InMemoryStore`, for unit tests."""

from __future__ import annotations

import builtins
import functools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, cast

import psycopg.errors
from sqlalchemy import ColumnElement, UnaryExpression
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.sql import operators

from .._arguments import (
    check_attributes,
    check_columns,
    check_criteria,
    check_ident,
    check_instance,
    check_values,
    mapping_rows,
    multiple_rows,
)
from .._errors import UsageError
from .._repository import ModelT, OrderBy, Repository, resolve_model
from ._memory_store import InMemoryStore, _compile, _db_error, _schema, _setter, _sort_key

__all__ = ["InMemoryRepository"]

Criterion = ColumnElement[bool]
_DIRECTION = (operators.asc_op, operators.desc_op)
_NULLS = (operators.nulls_first_op, operators.nulls_last_op)

_memory_classes: dict[type[Any], type[InMemoryRepository[Any]]] = {}


class InMemoryRepository(Repository[ModelT]):
    """A :class:`uow.Repository` over an :class:`InMemoryStore`, for unit tests.

    Same methods and results as the real one. Criteria and ``order_by`` are evaluated
    in Python by SQLAlchemy's ORM evaluator (the one ``synchronize_session="evaluate"``
    uses); one it cannot evaluate (``like``, SQL functions, Core columns) raises
    UsageError. Added objects are inserted at the next query or commit, like an
    autoflush: they get their integer key and column defaults then, and NOT NULL and
    unique constraints (the primary key too) raise ``sqlalchemy.exc.IntegrityError``
    holding psycopg's ``NotNullViolation`` or ``UniqueViolation``, as PostgreSQL does.
    A change to a stored object that breaks a unique constraint is caught at commit.

    Not emulated: CHECK constraints and foreign keys (nothing is rejected), server
    defaults (left None), ``onupdate``, relationships and cascades (add each object
    through its repository), inheritance, locks and isolation. Not thread-safe.
    """

    def __init__(self, store: InMemoryStore, model: type[ModelT] | None = None) -> None:
        """Bind a repository to a store.

        Args:
            store: where the objects live.
            model: the mapped class; optional for subclasses of ``Repository[Model]``.
        """
        self._model: type[ModelT] = resolve_model(self, model, "; pass it")
        self._store: InMemoryStore | None = store

    @property
    def session(self) -> Session:
        """Always raises UsageError: an in-memory repository has no session."""
        raise UsageError(
            f"{type(self).__name__} keeps objects in memory and has no session; use repository "
            "methods in code under unit test, and test session-level code against PostgreSQL"
        )

    @property
    def _data(self) -> InMemoryStore:
        if self._store is None:
            raise UsageError(
                f"this {type(self).__name__} belonged to a unit of work that has ended; "
                "use the repository only inside its `with` block"
            )
        return self._store

    def _detach(self) -> None:
        self._store = None

    def _matching(
        self, where: tuple[Criterion, ...], by: Mapping[str, Any], what: str = "list"
    ) -> list[ModelT]:
        check_attributes(self._model, by, what)
        criteria = [*where, *(getattr(self._model, key) == value for key, value in by.items())]
        tests = [_compile(self._model, criterion, "the criterion") for criterion in criteria]
        self._data._flush()
        rows = self._data._rows(self._model).values()
        # SQL keeps a row only when every criterion is true: NULL (None) does not match.
        return [obj for obj in rows if all((v := t(obj)) is not None and v for t in tests)]

    def _sort(self, objs: list[ModelT], order_by: OrderBy | Sequence[OrderBy]) -> None:
        several = isinstance(order_by, Sequence) and not isinstance(order_by, str)
        for clause in reversed(order_by if several else [order_by]):  # stable: last key first
            element = getattr(clause, "__clause_element__", lambda c=clause: c)()
            descending, nulls_last = False, None
            while isinstance(element, UnaryExpression) and element.modifier in _DIRECTION + _NULLS:
                if element.modifier in _DIRECTION:
                    descending = element.modifier is operators.desc_op
                else:
                    nulls_last = element.modifier is operators.nulls_last_op
                element = element.element
            value = _compile(self._model, element, "the order_by")
            # PostgreSQL sorts NULL above every value (last ascending, first descending)
            # unless told NULLS FIRST/LAST; reverse=True flips the NULL flag too.
            high = (not descending if nulls_last is None else nulls_last) != descending
            objs.sort(key=functools.partial(_sort_key, value, high), reverse=descending)

    def get(self, ident: Any) -> ModelT | None:
        """Return the object with this primary key, or None."""
        check_ident(self._model, ident, "get")
        return self._get(ident)

    def _get(self, ident: Any) -> ModelT | None:
        keys = _schema(self._model).primary_key
        key = ident if isinstance(ident, tuple) else (ident,)
        if isinstance(ident, Mapping):
            key = tuple(ident[k] for k in keys)
        self._data._flush()
        return cast("ModelT | None", self._data._rows(self._model).get(key))

    def get_by(self, *, for_update: bool = False, **attrs: Any) -> ModelT | None:
        """Return the one object with these attribute values, or None, like the real one."""
        check_criteria(self._model, attrs, "get_by")
        found = self._matching((), attrs, "get_by")
        if len(found) > 1:
            raise multiple_rows(self._model, attrs)
        return found[0] if found else None

    def get_for_update(
        self, ident: Any, *, nowait: bool = False, skip_locked: bool = False
    ) -> ModelT | None:
        """Return the object with this primary key, or None; there are no locks to take."""
        if nowait and skip_locked:
            raise UsageError("get_for_update: choose nowait or skip_locked, not both")
        check_ident(self._model, ident, "get_for_update")
        return self._get(ident)

    def add(self, obj: ModelT) -> ModelT:
        """Add a new object; it is inserted at the next query or commit."""
        check_instance(self._model, obj, "add")
        if id(obj) not in self._data._pending and not self._stored(obj):
            self._data._pending[id(obj)] = (self._model, obj)
        return obj

    def add_all(self, objs: Iterable[ModelT]) -> None:
        """Add several new objects."""
        objs = builtins.list(objs)
        for obj in objs:
            check_instance(self._model, obj, "add_all")
        for obj in objs:
            self.add(obj)

    def flush(self) -> None:
        """Insert pending objects (assigning keys and defaults) and check constraints."""
        self._data._flush()
        self._data._validate()

    def delete(self, obj: ModelT) -> None:
        """Delete a stored object."""
        check_instance(self._model, obj, "delete")
        if not self._stored(obj):  # the real session cannot delete unflushed objects either
            raise sa_exc.InvalidRequestError(f"Instance {obj!r} is not persisted")
        del self._data._rows(self._model)[_schema(self._model).values(obj)]

    def _stored(self, obj: Any) -> bool:
        return self._data._rows(self._model).get(_schema(self._model).values(obj)) is obj

    def list(
        self,
        *where: Criterion,
        order_by: OrderBy | Sequence[OrderBy] = (),
        limit: int | None = None,
        offset: int | None = None,
        for_update: bool = False,
        **by: Any,
    ) -> builtins.list[ModelT]:
        """Return the objects matching every criterion, like :meth:`uow.Repository.list`."""
        found = self._matching(where, by)
        self._sort(found, order_by)
        found = found[offset or 0 :]
        return found if limit is None else found[:limit]

    def count(self, *where: Criterion, **by: Any) -> int:
        """Count the objects matching the criteria."""
        return len(self._matching(where, by, "count"))

    def exists(self, *where: Criterion, **by: Any) -> bool:
        """Tell whether any object matches."""
        return bool(self._matching(where, by, "exists"))

    def insert_many(self, rows: Iterable[Mapping[str, Any]], *, batch_size: int = 5000) -> int:
        """Insert rows given as mappings of attribute names; returns how many.

        Like the real one, keys that are not column attributes raise UsageError.
        """
        if batch_size < 1:
            raise UsageError(f"insert_many: batch_size={batch_size} must be at least 1")
        batch = builtins.list(mapping_rows(rows, "insert_many"))
        check_columns(self._model, set().union(*batch), "insert_many")
        self._data._flush()
        objs = [self._new(row) for row in batch]
        self._data._insert(self._model, objs)
        return len(objs)

    def _new(self, row: Mapping[str, Any]) -> ModelT:
        # Rows from insert_many and upsert never go through the class's __init__, as in SQL.
        schema = _schema(self._model)
        obj = schema.mapper.class_manager.new_instance()
        for key in schema.columns:
            set_committed_value(obj, key, row.get(key))
        return cast(ModelT, obj)

    def upsert(
        self,
        rows: Mapping[str, Any] | Sequence[Mapping[str, Any]],
        *,
        conflict: Sequence[str] | None = None,
        update: Sequence[str] | None = None,
    ) -> builtins.list[ModelT]:
        """Insert rows or update the existing ones, like :meth:`uow.Repository.upsert`."""
        batch = self._upsert_rows(rows)
        keys = self._conflict_keys(conflict)
        update = self._update_keys(update, batch, keys)
        if not batch:
            return []
        schema, store = _schema(self._model), self._data
        if not any(set(keys) == set(unique) for _, unique in schema.unique):
            raise _db_error(
                sa_exc.ProgrammingError,
                psycopg.errors.InvalidColumnReference,
                "there is no unique or exclusion constraint matching the ON CONFLICT specification",
            )
        store._flush()
        index = {schema.values(obj, keys): obj for obj in store._rows(self._model).values()}
        done: builtins.list[ModelT] = []
        new: builtins.list[ModelT] = []
        for row in batch:
            key = tuple(row.get(k) for k in keys)
            existing = None if None in key else index.get(key)  # NULLs never conflict
            if existing is None:
                obj = index[key] = self._new(row)
                new.append(obj)
                done.append(obj)
            elif update:
                if any(existing is obj for obj in done):
                    raise _db_error(
                        sa_exc.ProgrammingError,
                        psycopg.errors.CardinalityViolation,
                        "ON CONFLICT DO UPDATE command cannot affect row a second time",
                    )
                for name in update:
                    set_committed_value(existing, name, row.get(name))
                done.append(existing)
        store._insert(self._model, new)
        store._validate()
        return done

    def update_where(self, values: Mapping[str, Any], *where: Criterion, **by: Any) -> int:
        """Update matching objects in place; returns how many matched.

        Values may be SQL expressions of the model's attributes (``Item.qty + 1``).
        """
        check_values(self._model, values, "update_where")
        setters = {key: _setter(self._model, value) for key, value in values.items()}
        found = self._matching(where, by, "update_where")
        # Every SET expression sees the row as it was, as in SQL.
        rows = [{key: setter(obj) for key, setter in setters.items()} for obj in found]
        for obj, row in zip(found, rows, strict=True):
            for key, value in row.items():
                set_committed_value(obj, key, value)
        self._data._validate()
        return len(found)

    def delete_where(self, *where: Criterion, **by: Any) -> int:
        """Delete matching objects; returns how many."""
        if not where and not by:
            raise UsageError(
                "delete_where() needs a criterion; to empty a table, say so with true()"
            )
        doomed = {id(obj) for obj in self._matching(where, by, "delete_where")}
        rows = self._data._rows(self._model)
        for key in [key for key, obj in rows.items() if id(obj) in doomed]:
            del rows[key]
        return len(doomed)

    def stream(
        self,
        *where: Criterion,
        order_by: OrderBy | Sequence[OrderBy] = (),
        batch_size: int = 1000,
        **by: Any,
    ) -> Iterator[ModelT]:
        """Iterate over matching objects."""
        found = self._matching(where, by, "stream")
        self._sort(found, order_by)
        yield from found

    def __repr__(self) -> str:
        state = "active" if self._store is not None else "ended"
        return f"<{type(self).__name__} of {self._model.__name__} ({state})>"


def _in_memory(repository_class: type[Repository[Any]]) -> type[InMemoryRepository[Any]]:
    """The in-memory class for a declared repository class, keeping its own methods."""
    if issubclass(repository_class, InMemoryRepository):
        return repository_class
    if repository_class is Repository:
        return InMemoryRepository
    found = _memory_classes.get(repository_class)
    if found is None:
        # The user's class first: its queries and overrides win, and the methods it
        # inherits from Repository come from InMemoryRepository instead.
        bases = (repository_class, InMemoryRepository)
        made = type(f"InMemory{repository_class.__name__}", bases, {"__module__": __name__})
        found = _memory_classes[repository_class] = cast(type[InMemoryRepository[Any]], made)
    return found
