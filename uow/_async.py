"""AsyncUnitOfWork: the same unit of work for asyncio, as a thin facade over the sync one.

One behaviour, one source: the rules (commit on clean exit, roll back on any error,
always close, join an open unit, savepoints, on_commit, readonly, isolation, timeout,
typed errors, leak reports) live in :class:`UnitOfWork`. Here a private subclass of
it runs inside SQLAlchemy's greenlet bridge (``greenlet_spawn``), the mechanism
SQLAlchemy's own AsyncSession is built on, with an AsyncSession's ``sync_session`` as
its session and the task (not the thread) as its owner. The facade only awaits.

Cancellation: the end of a unit (commit or rollback, then close) runs shielded from
cancellation, so a task cancelled at any point gives its connection back and leaves
no session idle in transaction; the cancellation is re-raised once that is done.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from types import FrameType, TracebackType
from typing import Any, ClassVar, Generic, Self, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session
from sqlalchemy.util import await_only, greenlet_spawn

from ._database import Database
from ._errors import UsageError
from ._repository import Criterion, ModelT, OrderBy, Repository, _ordered, model_from_bases
from ._unit_of_work import UnitOfWork
from ._unit_options import caller_frame, declared_repositories

__all__ = ["AsyncRepository", "AsyncUnitOfWork"]

M = TypeVar("M")
T = TypeVar("T")


def _task_owner() -> int:
    task = asyncio.current_task()
    return id(task) if task is not None else threading.get_ident()


class _Core(UnitOfWork):
    """The sync unit of work, driven from AsyncUnitOfWork through greenlet_spawn."""

    _owner_kind = "task"
    async_session: AsyncSession | None = None

    def _current_owner(self) -> int:
        return _task_owner()

    def _open_session(self, database: Database, caller: FrameType) -> Session:
        self.async_session = database._unit_session(
            readonly=self.readonly,
            isolation=self.isolation,
            timeout=self.timeout,
            replica=self.replica,
            caller=caller,
            asynchronous=True,
        )
        return self.async_session.sync_session


async def _shielded(step: Awaitable[T]) -> T:
    """Run ``step`` to the end even if the task is cancelled meanwhile; then re-raise."""
    task = asyncio.ensure_future(step)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
            break
        except asyncio.CancelledError:
            if task.done():
                raise
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return result


class AsyncUnitOfWork:
    """``async with AsyncUnitOfWork() as uow:``: one transaction, with UnitOfWork's rules.

    ``uow.session`` is an :class:`~sqlalchemy.ext.asyncio.AsyncSession`. Subclasses may
    declare :class:`AsyncRepository` annotations (``accounts: AsyncRepository[Account]``).
    A unit belongs to the task that entered it; a unit entered in the same task while
    another on the same database is open joins it.
    """

    def __init__(
        self,
        database: Database | None = None,
        *,
        readonly: bool = False,
        isolation: str | None = None,
        timeout: float | None = None,
        replica: bool = True,
    ) -> None:
        """Describe a unit of work; the arguments are those of :class:`UnitOfWork`."""
        self._core = _Core(
            database, readonly=readonly, isolation=isolation, timeout=timeout, replica=replica
        )
        self._session: AsyncSession | None = None
        self._repositories: dict[Any, AsyncRepository[Any]] = {}

    @property
    def readonly(self) -> bool:
        """Whether this unit runs a READ ONLY transaction."""
        return self._core.readonly

    @property
    def database(self) -> Database:
        """The database this unit of work runs on."""
        return self._core.database

    async def __aenter__(self) -> Self:
        caller = caller_frame("__aenter__")
        core = self._core
        await greenlet_spawn(core._enter, _task_owner(), caller)
        root = core._root
        session = root.async_session if isinstance(root, _Core) else core.async_session
        assert session is not None
        self._session = session
        for name, repository_class, model in declared_repositories(type(self), AsyncRepository):
            setattr(self, name, self._remember(model, repository_class(self, model)))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        core = self._core
        token = core._token
        for repository in self._repositories.values():
            repository._unit = None
        self._repositories = {}
        self._session = None
        committed = exc is None and core._root is None and not core.readonly
        try:
            await _shielded(greenlet_spawn(core.__exit__, exc_type, exc, traceback))
        finally:
            # The shielded step ran in a copy of this task's context: restore ours.
            if token is not None:
                core._restore_stack(token)
        if committed:
            core._note_write()  # in this task's context, for its next readonly units

    @property
    def session(self) -> AsyncSession:
        """The AsyncSession of this unit of work; valid only inside the block."""
        self._core.session  # noqa: B018 - checks that the unit is active and ours
        assert self._session is not None
        return self._session

    async def flush(self) -> None:
        """Send pending changes to the server now, without committing."""
        await greenlet_spawn(self._core.flush)

    async def commit(self) -> None:
        """Commit now; in a joined unit, only flush (see :meth:`UnitOfWork.commit`)."""
        await greenlet_spawn(self._core.commit)

    async def rollback(self) -> None:
        """Roll back now (see :meth:`UnitOfWork.rollback`)."""
        await greenlet_spawn(self._core.rollback)

    @contextlib.asynccontextmanager
    async def savepoint(self) -> AsyncIterator[None]:
        """``async with uow.savepoint():`` undoes only its own work if it raises."""
        block = self._core.savepoint()
        await greenlet_spawn(block.__enter__)
        try:
            yield
        except BaseException as exc:
            await _shielded(greenlet_spawn(block.__exit__, type(exc), exc, exc.__traceback__))
            raise
        await greenlet_spawn(block.__exit__, None, None, None)

    def on_commit(self, callback: Callable[[], object]) -> None:
        """Run ``callback()`` (awaited if it returns an awaitable) after the commit."""

        def run() -> None:
            result = callback()
            if isinstance(result, Awaitable):
                await_only(result)

        self._core.on_commit(run)

    def repository(self, model: type[M]) -> AsyncRepository[M]:
        """Return this unit's async repository for ``model`` (the same one on each call)."""
        self._core.session  # noqa: B018 - checks that the unit is active and ours
        repository = self._repositories.get(model)
        if repository is None:
            repository = self._remember(model, AsyncRepository(self, model))
        return repository

    def _remember(self, model: Any, repository: AsyncRepository[Any]) -> AsyncRepository[Any]:
        self._repositories.setdefault(model, repository)
        return repository

    def _begin_retry(self) -> bool:
        """See :meth:`UnitOfWork._begin_retry`: what run_transaction_async asks a unit."""
        return self._core._begin_retry()

    def _sync_repository(self, model: type[M]) -> Repository[M]:
        return self._core.repository(model)

    def __repr__(self) -> str:
        state = "active" if self._session is not None else "idle"
        return f"<{type(self).__name__} {state} readonly={self.readonly}>"


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
