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
import contextlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from types import FrameType, TracebackType
from typing import Any, Self, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session
from sqlalchemy.util import await_only, greenlet_spawn

from ._async_repository import AsyncRepository
from ._database import Database
from ._default import get_database
from ._jobs import defer_async
from ._repository import Repository
from ._unit_of_work import UnitOfWork
from ._unit_options import caller_frame, declared_repositories

__all__ = ["AsyncUnitOfWork"]

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

    def _enters_without_io(self) -> bool:
        """Whether entering sends nothing: only routing to a replica checks out a connection.

        Then the entry runs in the task itself, without a greenlet of its own (the bridge
        costs a greenlet and two switches each time).
        """
        if not (self.readonly and self.replica):
            return True
        database = self._database if self._database is not None else get_database()
        return not database.settings.replica_urls

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
        if core._enters_without_io():
            core._enter(_task_owner(), caller)
        else:
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
        if core._root is not None:  # joined: leaving sends nothing, and there is nothing to shield
            core.__exit__(exc_type, exc, traceback)
            return
        committed = exc is None and not core.readonly
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

    async def defer(self, task: Any, /, **task_kwargs: Any) -> int:
        """Insert a procrastinate job in this unit's transaction (see :meth:`UnitOfWork.defer`)."""
        connection = await greenlet_spawn(self._core._job_connection)
        return await defer_async(connection, task, task_kwargs)

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
