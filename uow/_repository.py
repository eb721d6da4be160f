"""Repository: typed data access for one mapped model, inside a unit of work."""

from __future__ import annotations

import builtins
import typing
from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import partial
from typing import Any, ClassVar, Generic, TypeVar, cast

from sqlalchemy import (
    ColumnElement,
    Integer,
    Select,
    Table,
    bindparam,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Mapper, Session

from ._arguments import (
    check_attributes,
    check_columns,
    check_criteria,
    check_ident,
    check_instance,
    check_values,
    column_names,
    mapper_of,
    mapping_rows,
    multiple_rows,
    primary_key,
)
from ._engine.bulk import copy_plan
from ._errors import UsageError
from ._statements import Shape, cached, element_of, equal_to, rebound

__all__ = [
    "Criterion",
    "ModelT",
    "OrderBy",
    "Repository",
    "model_from_bases",
    "ordered",
    "resolve_model",
]

ModelT = TypeVar("ModelT")

Criterion = ColumnElement[bool]
OrderBy = Any  # a column, an attribute, or col.desc(): whatever select().order_by() takes


class Repository(Generic[ModelT]):
    """Data access for one mapped model, bound to the session of a unit of work.

    Subclass it to add queries of your own (``class AccountRepository(Repository[Account])``),
    and declare it on a unit of work (``accounts: AccountRepository``), or ask a unit of
    work for a plain one with ``uow.repository(Account)``.

    Repositories may flush (to get generated keys or surface constraint errors early)
    but never commit: the unit of work decides. Every value reaches the server as a
    bound parameter. An attribute name the model does not have, a row that is not a
    mapping, or an object of another model raises UsageError naming it, before the
    statement is sent. Like the session, a repository belongs to one thread.
    """

    model: ClassVar[type[Any]]
    """The mapped class, taken from ``Repository[Model]`` in the class definition."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        model_from_bases(cls, Repository)

    def __init__(self, session: Session, model: type[ModelT] | None = None) -> None:
        """Bind a repository to a session.

        Args:
            session: the unit of work's session.
            model: the mapped class; optional for subclasses of ``Repository[Model]``.
        """
        self._model: type[ModelT] = resolve_model(
            self,
            model,
            ": subclass Repository[Model] or pass the model, as in Repository(session, Model)",
        )
        self._session: Session | None = session

    @property
    def session(self) -> Session:
        """The session of the unit of work this repository belongs to."""
        session = self._session
        if session is None:
            raise UsageError(
                f"this {type(self).__name__} belonged to a unit of work that has ended; "
                "use the repository only inside its `with UnitOfWork()` block"
            )
        return session

    def _detach(self) -> None:
        self._session = None

    @property
    def _mapper(self) -> Mapper[Any]:
        return mapper_of(self._model)

    def _column_keys_only(self, by: Mapping[str, Any]) -> bool:
        columns = self._mapper.c
        return all(key in columns for key in by)

    def _query(
        self,
        what: str,
        where: tuple[Criterion, ...],
        by: Mapping[str, Any],
        *,
        order_by: OrderBy | Sequence[OrderBy] = (),
        limit: int | None = None,
        offset: int | None = None,
        for_update: bool = False,
    ) -> tuple[Any, dict[str, Any]]:
        """The SELECT of ``what`` (list, stream, get_by, exists, count) and its parameters.

        Built once per shape and cached (see uow._statements); built afresh, with the
        values inline, when a criterion cannot be reused or ``by`` names a relationship.
        """
        if by:
            check_attributes(self._model, by, what)
        orders = order_tuple(order_by)
        shape = Shape(what, self._model, limit is not None, offset is not None, for_update)
        shape.expressions("where", where)
        shape.expressions("order", orders)
        shape.equals("by", by)
        key = shape.key if self._column_keys_only(by) else None
        if key is None:
            return self._assemble(
                what, where, by, orders, for_update, limit=limit, offset=offset
            ), {}
        params = shape.params
        if limit is not None:
            params["uow_limit"] = limit
        if offset is not None:
            params["uow_offset"] = offset
        options = {"limit": limit is not None, "offset": offset is not None}
        build = partial(self._assemble_bound, what, where, by, orders, for_update, **options)
        return cached(key, build), params

    def _assemble_bound(
        self,
        what: str,
        where: tuple[Criterion, ...],
        by: Mapping[str, Any],
        orders: tuple[OrderBy, ...],
        for_update: bool,
        *,
        limit: bool,
        offset: bool,
    ) -> Any:
        """The cached form of :meth:`_assemble`: every value a named bound parameter."""
        return self._assemble(
            what,
            tuple(rebound("where", where)),
            equal_to("by", by, lambda key: getattr(self._model, key)),
            tuple(rebound("order", orders)),
            for_update,
            limit=bindparam("uow_limit", type_=Integer) if limit else None,
            offset=bindparam("uow_offset", type_=Integer) if offset else None,
        )

    def _assemble(
        self,
        what: str,
        where: tuple[Any, ...],
        by: Mapping[str, Any] | builtins.list[Any],
        orders: tuple[OrderBy, ...],
        for_update: bool,
        *,
        limit: Any,
        offset: Any,
    ) -> Any:
        if what == "count":
            stmt = select(func.count()).select_from(self._model)
        else:
            stmt = select(self._model)
        if where:
            stmt = stmt.where(*where)
        if isinstance(by, Mapping):
            stmt = stmt.filter_by(**by) if by else stmt
        elif by:
            stmt = stmt.where(*by)
        stmt = ordered(stmt, orders)
        if what == "get_by":
            stmt = stmt.limit(2)  # two: enough to see that the criteria match several
        if limit is not None:
            stmt = stmt.limit(limit)
        if offset is not None:
            stmt = stmt.offset(offset)
        if for_update:
            stmt = stmt.with_for_update().execution_options(populate_existing=True)
        return select(stmt.exists()) if what == "exists" else stmt

    def get(self, ident: Any) -> ModelT | None:
        """Return the object with this primary key, or None (from the session if loaded).

        ``ident`` is the key's value, a tuple for a composite key, or a dict by attribute.
        """
        check_ident(self._model, ident, "get")
        return self.session.get(self._model, ident)

    def get_by(self, *, for_update: bool = False, **attrs: Any) -> ModelT | None:
        """Return the one object whose attributes equal these values, or None.

        For lookups by a unique attribute other than the primary key, such as
        ``products.get_by(sku="RED-CHAIR")``. One query, with ``LIMIT 2`` so that a
        duplicate is seen without reading further; objects added in this unit are
        flushed first and found too.

        Args:
            for_update: lock the row (``FOR UPDATE``) until the unit of work ends.
            **attrs: equality criteria on attribute names; at least one.

        Raises:
            MultipleRowsFound: more than one row matches (the criteria do not identify one).
            UsageError: no criteria, or an attribute the model does not have.
        """
        check_criteria(self._model, attrs, "get_by")
        stmt, params = self._query("get_by", (), attrs, for_update=for_update)
        try:
            return self.session.scalars(stmt, params).one_or_none()
        except sa_exc.MultipleResultsFound as exc:
            raise multiple_rows(self._model, attrs) from exc

    def get_for_update(
        self, ident: Any, *, nowait: bool = False, skip_locked: bool = False
    ) -> ModelT | None:
        """Load and lock a row (``SELECT ... FOR UPDATE``) until the unit of work ends.

        Args:
            ident: the primary key.
            nowait: fail at once (LockNotAvailable) instead of waiting for the lock.
            skip_locked: return None if another transaction holds the lock.
        """
        if nowait and skip_locked:
            raise UsageError("get_for_update: choose nowait or skip_locked, not both")
        check_ident(self._model, ident, "get_for_update")
        return self.session.get(
            self._model,
            ident,
            with_for_update={"nowait": nowait, "skip_locked": skip_locked},
            populate_existing=True,
        )

    def add(self, obj: ModelT) -> ModelT:
        """Add a new object; it is inserted at the next flush or commit."""
        check_instance(self._model, obj, "add")
        self.session.add(obj)
        return obj

    def add_all(self, objs: Iterable[ModelT]) -> None:
        """Add several new objects."""
        objs = builtins.list(objs)
        for obj in objs:
            check_instance(self._model, obj, "add_all")
        self.session.add_all(objs)

    def flush(self) -> None:
        """Send pending changes now (assigning generated keys), without committing."""
        self.session.flush()

    def delete(self, obj: ModelT) -> None:
        """Delete an object at the next flush or commit."""
        check_instance(self._model, obj, "delete")
        self.session.delete(obj)

    def list(
        self,
        *where: Criterion,
        order_by: OrderBy | Sequence[OrderBy] = (),
        limit: int | None = None,
        offset: int | None = None,
        for_update: bool = False,
        **by: Any,
    ) -> builtins.list[ModelT]:
        """Return the objects matching all criteria: ``list(Account.balance > 0, owner="ann")``.

        Args:
            *where: SQLAlchemy criteria, combined with AND.
            order_by: a column or a sequence of columns (``Account.id.desc()``).
            limit: at most this many objects.
            offset: skip this many first.
            for_update: lock the rows (``FOR UPDATE``); combine with ``order_by`` on the
                primary key so concurrent callers lock in the same order.
            **by: equality filters on attribute names.
        """
        stmt, params = self._query(
            "list",
            where,
            by,
            order_by=order_by,
            limit=limit,
            offset=offset,
            for_update=for_update,
        )
        return builtins.list(self.session.scalars(stmt, params))

    def count(self, *where: Criterion, **by: Any) -> int:
        """Count the rows matching the criteria (``SELECT count(*)``), without loading them."""
        stmt, params = self._query("count", where, by)
        return int(self.session.scalar(stmt, params) or 0)

    def exists(self, *where: Criterion, **by: Any) -> bool:
        """Tell whether any row matches (``SELECT EXISTS``), without loading it."""
        stmt, params = self._query("exists", where, by)
        return bool(self.session.scalar(stmt, params))

    def insert_many(self, rows: Iterable[Mapping[str, Any]], *, batch_size: int = 5000) -> int:
        """Insert many rows given as mappings of attribute names, in few round trips.

        No objects are created or loaded. When every row of a batch has the same keys
        and the columns need no SQLAlchemy value processing, the batch goes through
        PostgreSQL's COPY (the fastest way in); otherwise through multi-row INSERTs.
        Either way defaults apply as they would for an ORM insert. Returns the row count.
        """
        if batch_size < 1:
            raise UsageError(f"insert_many: batch_size={batch_size} must be at least 1")
        total = 0
        batch: builtins.list[Mapping[str, Any]] = []
        for row in mapping_rows(rows, "insert_many"):
            batch.append(row)
            if len(batch) >= batch_size:
                total += self._insert_batch(batch)
                batch = []
        if batch:
            total += self._insert_batch(batch)
        return total

    def _insert_batch(self, batch: builtins.list[Mapping[str, Any]]) -> int:
        keys = frozenset(batch[0])
        same_keys = all(row.keys() == keys for row in batch)
        check_columns(self._model, keys if same_keys else set().union(*batch), "insert_many")
        session = self.session
        plan = copy_plan(self._mapper, session.get_bind().dialect, keys) if same_keys else None
        if plan is None:
            session.execute(insert(self._model), batch)
        else:
            session.flush()  # COPY goes around the session: pending objects first
            plan.run(session.connection(), batch)
        return len(batch)

    def upsert(
        self,
        rows: Mapping[str, Any] | Sequence[Mapping[str, Any]],
        *,
        conflict: Sequence[str] | None = None,
        update: Sequence[str] | None = None,
    ) -> builtins.list[ModelT]:
        """Insert rows, or update the existing ones (``INSERT ... ON CONFLICT``).

        Args:
            rows: one mapping or several, keyed by attribute name.
            conflict: the attributes of the unique constraint; default the primary key.
            update: the attributes to overwrite on conflict; default every given
                attribute outside ``conflict``. An empty sequence means DO NOTHING.

        Returns:
            The inserted or updated objects, refreshed from the row (with DO NOTHING,
            rows that already existed are not returned).
        """
        batch = self._upsert_rows(rows)
        keys = self._conflict_keys(conflict)
        update = self._update_keys(update, batch, keys)
        if not batch:
            return []
        stmt, params = self._upsert_statement(batch, keys, update)
        result = self.session.scalars(stmt, params, execution_options={"populate_existing": True})
        return builtins.list(result)

    def _upsert_statement(
        self,
        batch: builtins.list[Mapping[str, Any]],
        keys: builtins.list[str],
        update: builtins.list[str],
    ) -> tuple[Any, dict[str, Any]]:
        # One row is the hot path, and its shape comes from code; how many rows a call
        # brings comes from data, so several rows build their statement each time.
        if len(batch) == 1:
            (row,) = batch
            shape = Shape("upsert", self._model, tuple(keys), tuple(update))
            shape.equals("row", row)
            key = shape.key
            if key is not None:
                params = {f"uow_row_{name}": value for name, value in row.items()}
                return cached(
                    key, lambda: self._upsert_built(row, keys, update, bound=True)
                ), params
        return self._upsert_built(batch, keys, update, bound=False), {}

    def _upsert_built(
        self,
        rows: Mapping[str, Any] | builtins.list[Mapping[str, Any]],
        keys: builtins.list[str],
        update: builtins.list[str],
        *,
        bound: bool,
    ) -> Any:
        mapper = self._mapper
        if bound:
            assert isinstance(rows, Mapping)
            rows = {name: bindparam(f"uow_row_{name}", type_=mapper.c[name].type) for name in rows}
        stmt = pg_insert(self._model).values(rows)
        columns = [mapper.c[key] for key in keys]
        if update:
            excluded = stmt.excluded
            stmt = stmt.on_conflict_do_update(
                index_elements=columns,
                set_={mapper.c[key].name: excluded[mapper.c[key].name] for key in update},
            )
        else:
            stmt = stmt.on_conflict_do_nothing(index_elements=columns)
        return stmt.returning(self._model)

    def _upsert_rows(
        self, rows: Mapping[str, Any] | Sequence[Mapping[str, Any]]
    ) -> builtins.list[Mapping[str, Any]]:
        batch = [rows] if isinstance(rows, Mapping) else [*mapping_rows(rows, "upsert")]
        check_columns(self._model, set().union(*batch), "upsert")
        return batch

    def _conflict_keys(self, conflict: Sequence[str] | None) -> builtins.list[str]:
        keys = [] if conflict is None else column_names(self._model, conflict, "conflict", "upsert")
        return keys or builtins.list(primary_key(self._model))

    def _update_keys(
        self,
        update: Sequence[str] | None,
        batch: builtins.list[Mapping[str, Any]],
        keys: builtins.list[str],
    ) -> builtins.list[str]:
        if update is None:
            return [key for key in batch[0] if key not in keys] if batch else []
        return column_names(self._model, update, "update", "upsert")

    def update_where(self, values: Mapping[str, Any], *where: Criterion, **by: Any) -> int:
        """Update matching rows in one statement, without loading them; returns the row count.

        Objects already loaded in this unit of work are updated to match. With none
        loaded, the statement runs as plain Core, the cheapest path for hot writes.
        """
        check_values(self._model, values, "update_where")
        if by:
            check_attributes(self._model, by, "update_where")
        session = self.session
        if self._orm_needed(session, by):
            return self._through_orm(session, update(self._model).values(dict(values)), where, by)
        # Nothing loaded to keep in step and nothing to flush: run it as plain Core on
        # the session's connection (in its transaction), without the ORM's bookkeeping.
        stmt, params = self._core("update_where", where, by, values)
        return int(session.connection().execute(stmt, params).rowcount)

    def delete_where(self, *where: Criterion, **by: Any) -> int:
        """Delete matching rows in one statement; returns the row count.

        Objects already loaded in this unit of work are marked deleted. With none loaded,
        the statement runs as plain Core, like :meth:`update_where`.
        """
        if not where and not by:
            raise UsageError(
                "delete_where() needs a criterion; to empty a table, say so with true()"
            )
        if by:
            check_attributes(self._model, by, "delete_where")
        session = self.session
        if self._orm_needed(session, by):
            return self._through_orm(session, delete(self._model), where, by)
        stmt, params = self._core("delete_where", where, by, None)
        return int(session.connection().execute(stmt, params).rowcount)

    @staticmethod
    def _through_orm(
        session: Session, stmt: Any, where: tuple[Criterion, ...], by: Mapping[str, Any]
    ) -> int:
        """Run an UPDATE or DELETE by criteria through the ORM, keeping loaded objects in step."""
        if where:
            stmt = stmt.where(*where)
        if by:
            stmt = stmt.filter_by(**by)
        result = session.execute(stmt, execution_options={"synchronize_session": "fetch"})
        return int(getattr(result, "rowcount", 0))

    def _orm_needed(self, session: Session, by: Mapping[str, Any]) -> bool:
        """Whether an UPDATE or DELETE by criteria must go through the ORM.

        It must with objects loaded or pending (to keep in step), a relationship among
        the criteria (to resolve), or an inherited model (the ORM adds the subclass's
        discriminator or tables: the model's own table is not the whole story).
        """
        # Objects deleted or modified are in the identity map until the flush: with it
        # empty, only new ones can be pending.
        return bool(
            session.identity_map
            or session.new
            or self._mapper.inherits is not None
            or not self._column_keys_only(by)
        )

    def _core(
        self,
        what: str,
        where: tuple[Criterion, ...],
        by: Mapping[str, Any],
        values: Mapping[str, Any] | None,
    ) -> tuple[Any, dict[str, Any]]:
        """UPDATE (``values`` given) or DELETE on the model's table, and its parameters.

        Built once per shape and cached, each value a bound parameter; built afresh with
        the values inline when an expression cannot be reused (see uow._statements).
        """
        columns = self._mapper.c
        plain = {} if values is None else dict(values)
        expressions = {k: v for k, v in plain.items() if element_of(v) is not None}
        shape = Shape(what, self._model, tuple((k, k in expressions) for k in plain))
        shape.expressions("set", expressions.values())
        shape.expressions("where", where)
        shape.equals("by", by)
        key = shape.key
        if key is None:
            return self._core_statement(values, where, [columns[k] == v for k, v in by.items()]), {}
        params = shape.params
        for name, value in plain.items():
            if name not in expressions:
                params[f"uow_set_{name}"] = value

        def build() -> Any:
            rebuilt = dict(zip(expressions, rebound("set", expressions.values()), strict=True))
            bound = None
            if values is not None:
                bound = {
                    k: rebuilt[k]
                    if k in rebuilt
                    else bindparam(f"uow_set_{k}", type_=columns[k].type)
                    for k in plain
                }
            criteria = equal_to("by", by, lambda k: columns[k])
            return self._core_statement(bound, tuple(rebound("where", where)), criteria)

        return cached(key, build), params

    def _core_statement(
        self,
        values: Mapping[str, Any] | None,
        where: tuple[Any, ...],
        by: builtins.list[Any],
    ) -> Any:
        table = self._mapper.local_table
        assert isinstance(table, Table)
        columns = self._mapper.c
        stmt: Any = (
            delete(table)
            if values is None
            else update(table).values({columns[k]: v for k, v in values.items()})
        )
        if where:
            stmt = stmt.where(*where)
        if by:
            stmt = stmt.where(*by)
        return stmt

    def stream(
        self,
        *where: Criterion,
        order_by: OrderBy | Sequence[OrderBy] = (),
        batch_size: int = 1000,
        **by: Any,
    ) -> Iterator[ModelT]:
        """Iterate over matching objects, fetched ``batch_size`` at a time.

        Uses a server-side cursor, so the result is never held whole in memory; call
        ``uow.session.expunge_all()`` between batches to let processed objects go too.
        """
        stmt, params = self._query("stream", where, by, order_by=order_by)
        result = self.session.scalars(stmt, params, execution_options={"yield_per": batch_size})
        try:
            yield from result
        finally:
            result.close()

    def __repr__(self) -> str:
        state = "active" if self._session is not None else "ended"
        return f"<{type(self).__name__} of {self._model.__name__} ({state})>"


def resolve_model(repository: object, model: type[ModelT] | None, hint: str) -> type[ModelT]:
    """``model``, else the repository class's ``model``; a UsageError ending in ``hint``."""
    resolved = model if model is not None else getattr(type(repository), "model", None)
    if resolved is None:
        raise UsageError(f"{type(repository).__name__} does not know its model{hint}")
    return cast("type[ModelT]", resolved)


def model_from_bases(cls: type[Any], family: type[Any]) -> None:
    """Set ``cls.model`` from ``class X(Family[Model])``, unless the class sets it itself."""
    if "model" in cls.__dict__:
        return
    for base in getattr(cls, "__orig_bases__", ()):
        origin = typing.get_origin(base)
        if isinstance(origin, type) and issubclass(origin, family):
            (model,) = typing.get_args(base)
            if isinstance(model, type):
                cls.model = model
            return


def order_tuple(order_by: OrderBy | Sequence[OrderBy]) -> tuple[OrderBy, ...]:
    """``order_by`` (one criterion or several) as a tuple."""
    if isinstance(order_by, Sequence) and not isinstance(order_by, str):
        return tuple(order_by)
    return (order_by,)


def ordered(stmt: Select[Any], order_by: OrderBy | Sequence[OrderBy]) -> Select[Any]:
    """``stmt`` ordered by one criterion or several (an empty sequence leaves it as is)."""
    if isinstance(order_by, Sequence) and not isinstance(order_by, str):
        return stmt.order_by(*order_by) if order_by else stmt
    return stmt.order_by(order_by)
