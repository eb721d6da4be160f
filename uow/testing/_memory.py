"""FakeUnitOfWork and fake(): the in-memory twin of UnitOfWork, for fast unit tests.

``fake(ShopUnitOfWork)`` returns a unit of work that behaves like ``ShopUnitOfWork``
(commit on clean exit, rollback on any exception, savepoints, ``on_commit``, declared
repositories) but keeps mapped objects in an :class:`InMemoryStore`, not PostgreSQL.
``tests/contract/`` holds both to one suite; what the fake cannot match is listed in
the docstrings of :class:`InMemoryRepository` and :class:`FakeUnitOfWork`. The fake ends
through UnitOfWork's own ``__exit__``: one copy of the rules, run on in-memory primitives.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Self, TypeVar, cast

from sqlalchemy.orm import Session

from .._database import Database
from .._errors import UsageError
from .._jobs import READONLY, DeferredJob, check_json, job_of
from .._repository import Repository
from .._unit_of_work import UnitOfWork
from ._memory_repository import InMemoryRepository, _in_memory
from ._memory_store import InMemoryStore, _Snapshot

# InMemoryStore is re-exported: it was defined here before the store got its own module.
__all__ = ["FakeUnitOfWork", "InMemoryRepository", "InMemoryStore", "fake"]

U = TypeVar("U", bound=UnitOfWork)
M = TypeVar("M")

_fake_classes: dict[type[Any], type[FakeUnitOfWork]] = {}


class FakeUnitOfWork(UnitOfWork):
    """A :class:`uow.UnitOfWork` that keeps its data in an :class:`InMemoryStore`.

    Same rules as the real one: a clean exit commits; any exception, KeyboardInterrupt
    included, rolls back and propagates; ``savepoint()`` undoes only its own work;
    ``on_commit`` callbacks run after a commit, never after a rollback; a readonly unit
    never commits and raises UsageError if it ends with changes; an active unit cannot
    be entered again, an ended one can. Rollback restores the stored objects and their
    column attributes. Declared repositories become in-memory ones that keep the
    declared class's own methods. Data committed in one block is seen by the next.

    Differences: ``session`` and ``database`` raise UsageError; ``isolation`` and
    ``timeout`` are checked, then ignored; two units on one store cannot be open at
    once (a real nested unit joins the outer one; a fake refuses); objects are shared
    between blocks, so changing one outside a block changes the store. Not thread-safe.
    ``defer()`` records the job (:class:`DeferredJob`) in ``store.jobs`` when the unit
    commits; nothing runs it, so every recorded job counts as waiting for a queueing lock.

    Attributes:
        store: the store holding the data.
        committed: True once this unit has committed, for asserts in tests.
    """

    def __init__(
        self, store: InMemoryStore | None = None, *, readonly: bool = False, **kwargs: Any
    ) -> None:
        """Describe a fake unit of work.

        Args:
            store: the data; a new empty store by default.
            readonly: never commit, as ``UnitOfWork(readonly=True)``.
            **kwargs: passed on to the faked class's ``__init__``.
        """
        super().__init__(readonly=readonly, **kwargs)
        self.store = store if store is not None else InMemoryStore()
        self.committed = False
        self._begin: _Snapshot | None = None  # the data at the last commit; None when idle
        self._deferred: list[DeferredJob] = []  # jobs deferred since the last commit

    def __enter__(self) -> Self:
        if self._begin is not None:
            raise UsageError(
                "this UnitOfWork is already active; enter it again after its block ends, "
                "or use uow.savepoint()"
            )
        if self.store._active is not None:
            raise UsageError(
                f"{self.store._active!r} is active on the same InMemoryStore; fakes do not "
                "join each other as real units of work do: pass one fake to the code under test"
            )
        self.store._flush()  # what standalone repositories added counts as committed
        self._begin = self.store._snapshot()
        self.store._active = self
        store = self.store
        return self._attach_repositories(lambda cls, model: _in_memory(cls)(store, model))

    # UnitOfWork.__exit__ applies the rules (commit on a clean exit, roll back on an
    # exception or a failed commit, refuse a readonly unit's changes, run on_commit
    # callbacks after a commit); these are the primitives it runs them on.

    def _in_block(self) -> bool:
        return self._begin is not None

    def _has_changes(self) -> bool:
        return self.store._changed(self._transaction())

    def _commit_transaction(self) -> None:
        self.store._flush()
        self.store._validate()
        self._begin = self.store._snapshot()
        self.store.jobs += self._deferred
        self._deferred = []
        self.committed = True

    def _rollback_quietly(self) -> None:
        self._pending = []
        self._deferred = []
        self.store._restore(self._transaction())

    def _leave(self) -> None:
        super()._leave()  # detaches the repositories
        self._begin = None
        if self.store._active is self:
            self.store._active = None

    def _transaction(self) -> _Snapshot:
        """The data as of the last commit, which rollback restores; raises if not active."""
        if self._begin is None:
            raise UsageError("this UnitOfWork is not active; use it inside `with uow:`")
        return self._begin

    @property
    def session(self) -> Session:
        """Always raises UsageError: a fake unit of work has no session."""
        raise UsageError(
            f"{type(self).__name__} is an in-memory fake and has no session; reach data through "
            "its repositories, and test code that needs the session against PostgreSQL"
        )

    @property
    def database(self) -> Database:
        """Always raises UsageError: a fake unit of work has no database."""
        raise UsageError(f"{type(self).__name__} is an in-memory fake and has no database")

    def _begin_retry(self) -> bool:
        # As the real one: no retry while a unit on the same store is open around this one.
        return self.store._active is None

    def flush(self) -> None:
        """Insert pending objects (assigning keys and defaults) and check constraints."""
        self._transaction()
        self.store._flush()
        self.store._validate()

    def commit(self) -> None:
        """Commit now; later work in the block is a new transaction."""
        self._transaction()
        if self.readonly:
            raise UsageError("a readonly unit of work cannot commit")
        self._commit_transaction()
        self._committed += self._pending
        self._pending = []

    def rollback(self) -> None:
        """Undo everything since the last commit; the block may go on and commit later work."""
        self._rollback_quietly()

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """Run a block whose work alone is undone if it raises; the exception propagates."""
        self._transaction()
        self.store._flush()  # begin_nested() flushes first
        snapshot, mark, jobs = self.store._snapshot(), len(self._pending), len(self._deferred)
        try:
            yield
            self.store._flush()  # so does RELEASE SAVEPOINT: the block's errors are its own
            self.store._validate()
        except BaseException:
            self.store._restore(snapshot)
            del self._pending[mark:]
            del self._deferred[jobs:]
            raise

    def defer(self, task: Any, /, **task_kwargs: Any) -> int:
        """Record the job ``task`` would insert; ``store.jobs`` keeps it once committed.

        Raises what :meth:`uow.UnitOfWork.defer` raises: UsageError outside the block, in
        a readonly unit or for arguments that are not JSON values, procrastinate's
        AlreadyEnqueued for a queueing lock taken by a recorded job.
        """
        self._transaction()
        if self.readonly:
            raise UsageError(READONLY)
        job = job_of(task, task_kwargs)
        check_json(job.task_kwargs)
        lock = job.queueing_lock
        if lock is not None and any(j.queueing_lock == lock for j in self._all_jobs()):
            from procrastinate.exceptions import AlreadyEnqueued  # noqa: PLC0415

            raise AlreadyEnqueued(
                "Job cannot be enqueued: there is already a job in the queue "
                f"with the queueing lock {lock}"
            )
        self.store._job_ids += 1
        self._deferred.append(
            DeferredJob(
                id=self.store._job_ids,
                task_name=job.task_name,
                kwargs=dict(job.task_kwargs),
                queue=job.queue,
                lock=job.lock,
                queueing_lock=lock,
                priority=job.priority,
                scheduled_at=job.scheduled_at,
            )
        )
        return self.store._job_ids

    def _all_jobs(self) -> list[DeferredJob]:
        return [*self.store.jobs, *self._deferred]

    def on_commit(self, callback: Callable[[], object]) -> None:
        """Run ``callback()`` after the unit commits, never if it rolls back."""
        self._transaction()
        self._pending.append(callback)

    def repository(self, model: type[M]) -> Repository[M]:
        """Return this unit's in-memory repository for ``model`` (the same one on each call)."""
        self._transaction()
        repository = self._repositories.get(model)
        if repository is None:
            repository = self._remember(model, InMemoryRepository(self.store, model))
        return repository

    def __repr__(self) -> str:
        state = "active" if self._begin is not None else "idle"
        return f"<{type(self).__name__} {state} readonly={self.readonly}>"


def _fake_class(unit_of_work_class: type[UnitOfWork]) -> type[FakeUnitOfWork]:
    if issubclass(unit_of_work_class, FakeUnitOfWork):
        return unit_of_work_class
    if unit_of_work_class is UnitOfWork:
        return FakeUnitOfWork
    found = _fake_classes.get(unit_of_work_class)
    if found is None:
        # FakeUnitOfWork first: its transaction methods replace the real ones, which need
        # a session; every other method of the user's class is inherited unchanged.
        name = f"Fake{unit_of_work_class.__name__}"
        namespace = {"__module__": unit_of_work_class.__module__, "__qualname__": name}
        made = type(name, (FakeUnitOfWork, unit_of_work_class), namespace)
        found = _fake_classes[unit_of_work_class] = made
    return found


def fake(unit_of_work_class: type[U], /, store: InMemoryStore | None = None, **kwargs: Any) -> U:
    """Return an in-memory fake of ``unit_of_work_class``, typed as that class.

    The fake is an instance of a subclass of both :class:`FakeUnitOfWork` and the given
    class, so the class's own methods work, its declared repositories are in-memory,
    and it type-checks wherever the real unit of work is expected. To reach
    ``committed`` or ``store`` under mypy, narrow it: ``assert isinstance(u, FakeUnitOfWork)``.

    Args:
        unit_of_work_class: a :class:`uow.UnitOfWork` subclass, or UnitOfWork itself.
        store: the data; a new empty store by default. Pass another fake's to share it.
        **kwargs: passed to the constructor: ``readonly=True``, the class's own arguments.
    """
    return cast(U, _fake_class(unit_of_work_class)(store, **kwargs))
