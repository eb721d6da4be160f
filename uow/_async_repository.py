"""AsyncRepository: :class:`~uow.Repository`'s methods, awaited, for AsyncUnitOfWork."""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Generic

from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.util import greenlet_spawn

from ._errors import UsageError
from ._repository import Criterion, ModelT, OrderBy, Repository, _ordered, model_from_bases

if TYPE_CHECKING:
    from ._async import AsyncUnitOfWork

__all__ = ["AsyncRepository"]


class AsyncRepository(Generic[ModelT]):
    """:class:`~uow.Repository`'s methods, awaited; the same code runs underneath.

    Subclass it for queries of your own (``class AccountRepository(AsyncRepository[Account])``)
    and declare it on an AsyncUnitOfWork subclass.
    """

    model: ClassVar[type[Any]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        model_from_bases(cls, AsyncRepository)

    def __init__(self, unit: AsyncUnitOfWork, model: type[ModelT] | None = None) -> None:
        """Bind a repository to an open AsyncUnitOfWork."""
        resolved = model if model is not None else getattr(type(self), "model", None)
        if resolved is None:
            raise UsageError(
                f"{type(self).__name__} does not know its model: subclass "
                "AsyncRepository[Model] or pass the model"
            )
        self._model: type[ModelT] = resolved
        self._unit: AsyncUnitOfWork | None = unit

    @property
    def _sync(self) -> Repository[ModelT]:
        if self._unit is None:
            raise UsageError(
                f"this {type(self).__name__} belonged to a unit of work that has ended; "
                "use the repository only inside its `async with` block"
            )
        return self._unit._sync_repository(self._model)

    @property
    def session(self) -> AsyncSession:
        """The AsyncSession of the unit of work this repository belongs to."""
        self._sync  # noqa: B018 - raises once the unit has ended
        assert self._unit is not None
        return self._unit.session

    async def get(self, ident: Any) -> ModelT | None:
        """See :meth:`uow.Repository.get`."""
        return await greenlet_spawn(self._sync.get, ident)

    async def get_by(self, *, for_update: bool = False, **attrs: Any) -> ModelT | None:
        """See :meth:`uow.Repository.get_by`."""
        return await greenlet_spawn(self._sync.get_by, for_update=for_update, **attrs)

    async def get_for_update(
        self, ident: Any, *, nowait: bool = False, skip_locked: bool = False
    ) -> ModelT | None:
        """See :meth:`uow.Repository.get_for_update`."""
        return await greenlet_spawn(
            self._sync.get_for_update, ident, nowait=nowait, skip_locked=skip_locked
        )

    def add(self, obj: ModelT) -> ModelT:
        """See :meth:`uow.Repository.add` (no I/O: the insert happens at flush)."""
        return self._sync.add(obj)

    def add_all(self, objs: Iterable[ModelT]) -> None:
        """See :meth:`uow.Repository.add_all`."""
        self._sync.add_all(objs)

    async def flush(self) -> None:
        """See :meth:`uow.Repository.flush`."""
        await greenlet_spawn(self._sync.flush)

    async def delete(self, obj: ModelT) -> None:
        """See :meth:`uow.Repository.delete`."""
        await greenlet_spawn(self._sync.delete, obj)

    async def list(
        self,
        *where: Criterion,
        order_by: OrderBy | Sequence[OrderBy] = (),
        limit: int | None = None,
        offset: int | None = None,
        for_update: bool = False,
        **by: Any,
    ) -> builtins.list[ModelT]:
        """See :meth:`uow.Repository.list`."""
        return await greenlet_spawn(
            self._sync.list,
            *where,
            order_by=order_by,
            limit=limit,
            offset=offset,
            for_update=for_update,
            **by,
        )

    async def count(self, *where: Criterion, **by: Any) -> int:
        """See :meth:`uow.Repository.count`."""
        return await greenlet_spawn(self._sync.count, *where, **by)

    async def exists(self, *where: Criterion, **by: Any) -> bool:
        """See :meth:`uow.Repository.exists`."""
        return await greenlet_spawn(self._sync.exists, *where, **by)

    async def insert_many(
        self, rows: Iterable[Mapping[str, Any]], *, batch_size: int = 5000
    ) -> int:
        """See :meth:`uow.Repository.insert_many` (COPY is used only by the sync driver)."""
        return await greenlet_spawn(self._sync.insert_many, rows, batch_size=batch_size)

    async def upsert(
        self,
        rows: Mapping[str, Any] | Sequence[Mapping[str, Any]],
        *,
        conflict: Sequence[str] | None = None,
        update: Sequence[str] | None = None,
    ) -> builtins.list[ModelT]:
        """See :meth:`uow.Repository.upsert`."""
        return await greenlet_spawn(self._sync.upsert, rows, conflict=conflict, update=update)

    async def update_where(self, values: Mapping[str, Any], *where: Criterion, **by: Any) -> int:
        """See :meth:`uow.Repository.update_where`."""
        return await greenlet_spawn(self._sync.update_where, values, *where, **by)

    async def delete_where(self, *where: Criterion, **by: Any) -> int:
        """See :meth:`uow.Repository.delete_where`."""
        return await greenlet_spawn(self._sync.delete_where, *where, **by)

    async def stream(
        self,
        *where: Criterion,
        order_by: OrderBy | Sequence[OrderBy] = (),
        batch_size: int = 1000,
        **by: Any,
    ) -> AsyncIterator[ModelT]:
        """See :meth:`uow.Repository.stream`: a server-side cursor, read asynchronously."""
        stmt = _ordered(self._sync._select(where, by, "stream"), order_by)
        result = await self.session.stream_scalars(stmt.execution_options(yield_per=batch_size))
        try:
            async for obj in result:
                yield obj
        finally:
            await result.close()

    def __repr__(self) -> str:
        state = "active" if self._unit is not None else "ended"
        return f"<{type(self).__name__} of {self._model.__name__} ({state})>"
