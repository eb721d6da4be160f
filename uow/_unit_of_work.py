"""UnitOfWork: one session, one short transaction, always closed."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from types import FrameType, TracebackType
from typing import Any, Self, TypeVar

from sqlalchemy import Connection
from sqlalchemy.orm import Session

from ._database import Database
from ._default import get_database
from ._errors import TransactionRolledBack, UsageError
from ._jobs import READONLY, defer
from ._repository import Repository
from ._sessions import close_session, commit_session
from ._unit_options import caller_frame, check_unit_options, declared_repositories

__all__ = ["UnitOfWork"]

logger = logging.getLogger("uow")

M = TypeVar("M")

# The units of work open in this thread (or task), innermost last: a UnitOfWork
# entered while one on the same database is open joins it instead of taking a
# second connection (a thread holding one connection and waiting for another is
# how pools deadlock under load).
_active: ContextVar[tuple[UnitOfWork, ...]] = ContextVar("uow_active", default=())


class UnitOfWork:
    """One database transaction, opened by ``with`` and always closed.

    ``with UnitOfWork() as uow:`` opens a session (``uow.session``) on the default
    database, or on the one given. A clean exit commits; any exception, including
    KeyboardInterrupt and GeneratorExit, rolls back and propagates unchanged. The
    session is always closed and its connection returned to the pool.

    A UnitOfWork entered while another on the same database is open in the same
    thread joins it: it shares the transaction, commits nothing itself, and if it
    fails the outer one rolls back. Use :meth:`savepoint` for work that may fail on
    its own. An instance may be entered again once it has exited, but not while
    active, and only from the thread that entered it.

    Subclasses may declare repositories as annotations (``accounts: AccountRepository``
    or ``accounts: Repository[Account]``); they are ready inside the block.
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
        """Describe a unit of work; nothing happens until it is entered.

        Args:
            database: the database to use; defaults to ``uow.get_database()``.
            readonly: run a READ ONLY transaction, which is never committed.
            isolation: ``"SERIALIZABLE"``, ``"REPEATABLE READ"`` or ``"READ COMMITTED"``;
                defaults to the server's (READ COMMITTED unless configured otherwise).
            timeout: seconds any one statement may run (``SET LOCAL statement_timeout``);
                the server cancels a statement that runs longer.
            replica: with ``readonly=True`` and ``replica_urls`` configured, read from a
                replica (the default; it may lag slightly behind); False reads from the
                primary. Units that may write always run on the primary.
        """
        isolation, timeout = check_unit_options(database, readonly, isolation, timeout, replica)
        self.readonly = readonly
        self.isolation = isolation
        self.timeout = timeout
        self.replica = replica
        self._database = database
        self._session: Session | None = None
        self._db: Database | None = None
        self._owner = 0
        self._root: UnitOfWork | None = None  # the outer unit this one joined
        self._token: Token[tuple[UnitOfWork, ...]] | None = None
        self._repositories: dict[Any, Repository[Any]] = {}
        self._pending: list[Callable[[], object]] = []  # on_commit callbacks not yet committed
        self._committed: list[Callable[[], object]] = []
        self._failure: BaseException | None = None  # why a joined unit doomed this one
        self._frame: FrameType | None = None  # where user code entered this unit

    # -- entering and leaving ---------------------------------------------------------

    def __enter__(self) -> Self:
        return self._enter(threading.get_ident(), caller_frame())

    # What owns a unit: a thread here, a task in AsyncUnitOfWork's core.
    _owner_kind = "thread"

    def _current_owner(self) -> int:
        return threading.get_ident()

    def _open_session(self, database: Database, caller: FrameType) -> Session:
        """A root unit's new session, from the database's seam for units of work."""
        return database._unit_session(
            readonly=self.readonly,
            isolation=self.isolation,
            timeout=self.timeout,
            replica=self.replica,
            caller=caller,
            asynchronous=False,
        )

    def _enter(self, me: int, caller: FrameType) -> Self:
        if self._session is not None:
            raise UsageError(
                "this UnitOfWork is already active; open a nested unit with a new "
                "UnitOfWork() (it joins this one) or use uow.savepoint()"
            )
        database = self._database if self._database is not None else get_database()
        stack = _active.get()
        root = next((u for u in stack if u._joinable(database, me, caller)), None)
        if root is not None:
            self._check_can_join(root)
            session = root.session
        else:
            session = self._open_session(database, caller)
        self._db, self._session, self._root = database, session, root
        self._owner, self._frame = me, caller
        self._token = _active.set((*stack, self))
        return self._attach_repositories(lambda cls, model: cls(session, model))

    def _attach_repositories(self, build: Callable[[Any, Any], Repository[Any]]) -> Self:
        """Set each declared repository attribute to ``build(repository_class, model)``.

        Called once the unit is active; if building fails, the unit is left again.
        """
        try:
            for name, repository_class, model in declared_repositories(type(self)):
                setattr(self, name, self._remember(model, build(repository_class, model)))
        except BaseException:
            self._leave()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if not self._in_block():
            return
        if self._root is not None:
            if exc is not None:
                self._root._doom(exc)
            self._leave()
            return
        finished = False
        try:
            if exc is None:
                self._finish()
            else:
                self._rollback_quietly()
            finished = True
        finally:
            self._leave()
            callbacks = self._committed
            if callbacks:
                self._committed = []
                self._run_callbacks(callbacks, raise_errors=finished and exc is None)

    def _joinable(self, database: Database, thread: int, caller: FrameType) -> bool:
        """Whether a unit entered from ``caller`` in ``thread`` joins this one."""
        if self._db is not database or self._owner != thread or self._session is None:
            # A context copied into another thread (asyncio.to_thread, executors) or
            # left behind by a generator finalised elsewhere carries stale entries.
            return False
        # Only join a unit whose block encloses the caller: one left open by a
        # suspended generator is not on the call stack, and joining it would tie this
        # unit's fate to a generator that may never resume.
        frame: FrameType | None = caller
        while frame is not None:
            if frame is self._frame:
                return True
            frame = frame.f_back
        return False

    def _check_can_join(self, root: UnitOfWork) -> None:
        if self.isolation is not None and self.isolation != root.isolation:
            raise UsageError(
                f"this UnitOfWork(isolation={self.isolation!r}) would join an open unit of work "
                f"with isolation={root.isolation!r}; a transaction has one isolation level. "
                "Set it on the outermost unit of work."
            )
        if root.readonly and not self.readonly:
            raise UsageError(
                "a writing UnitOfWork cannot join an open readonly one; "
                "open the outer unit of work without readonly=True"
            )
        if self.timeout is not None:
            raise UsageError(
                "timeout= applies to a whole transaction and this UnitOfWork would join an open "
                "one; set the timeout on the outermost unit of work"
            )

    def _finish(self) -> None:
        if self._failure is not None:
            self._rollback_quietly()
            raise TransactionRolledBack(
                "the transaction was rolled back, not committed, because a unit of work that "
                f"joined it failed: {self._failure!r}"
            ) from self._failure
        if self.readonly:
            if self._has_changes():
                self._rollback_quietly()
                raise UsageError(
                    "a readonly unit of work ended with unsaved changes, which were discarded; "
                    "open it without readonly=True to write"
                )
            # Closing the session ends the transaction (the pool's reset on return rolls
            # it back, the same one round trip) without expiring the loaded objects, so
            # they stay readable after the block; session.rollback() would expire them.
            return
        try:
            self._commit_transaction()
        except BaseException:
            self._rollback_quietly()
            raise
        self._note_write()
        self._committed += self._pending
        self._pending = []

    # The primitives __exit__'s rules run on; FakeUnitOfWork overrides them to keep its
    # data in memory, so both follow one copy of the rules. They read _session, not the
    # thread-checked property: a generator's unit may be finalised by the garbage
    # collector in another thread, and must still end.

    def _in_block(self) -> bool:
        return self._session is not None

    def _has_changes(self) -> bool:
        session = self._session
        assert session is not None
        return bool(session.new or session.dirty or session.deleted)

    def _commit_transaction(self) -> None:
        session = self._session
        assert session is not None
        commit_session(session)

    def _rollback_quietly(self) -> None:
        """Roll back; a failure is logged so it never hides the exception being handled."""
        self._pending = []
        try:
            if self._session is not None:
                self._session.rollback()
        except BaseException:
            logger.exception("rollback failed; the connection will be discarded")

    def _leave(self) -> None:
        session, self._session = self._session, None
        for repository in self._repositories.values():
            repository._detach()
        self._repositories = {}
        if self._root is None and session is not None:
            close_session(session)
        self._failure = None
        self._root = self._frame = None
        token, self._token = self._token, None
        if token is not None:
            try:
                _active.reset(token)
            except ValueError:
                # Exited in another context (a generator finalised elsewhere):
                # drop just this unit from that context's stack.
                _active.set(tuple(unit for unit in _active.get() if unit is not self))

    def _note_write(self) -> None:
        """Send this thread's (or task's) next readonly units to the primary for a while."""
        db = self._db
        if db is not None and db._replicas is not None:  # the one case with work to do
            db._note_write()

    def _begin_retry(self) -> bool:
        """Whether retry may run this ended unit's work again; if so, the retry is counted.

        Not when a unit on the same database is still open around it in this thread (or
        task): that transaction is aborted, and the error belongs to whoever opened it.
        """
        database, me = self.database, self._current_owner()
        for unit in _active.get():
            if unit._db is database and unit._owner == me and unit._session is not None:
                return False
        database._note_retry()
        return True

    @staticmethod
    def _restore_stack(token: Token[tuple[UnitOfWork, ...]]) -> None:
        """Put this context's stack of open units back as ``token`` found it, if it can."""
        with contextlib.suppress(ValueError):
            _active.reset(token)

    def _doom(self, cause: BaseException) -> None:
        if self._failure is None:
            self._failure = cause

    @staticmethod
    def _run_callbacks(callbacks: list[Callable[[], object]], *, raise_errors: bool) -> None:
        first_error: Exception | None = None
        for callback in callbacks:
            try:
                callback()
            except Exception as exc:
                logger.exception("on_commit callback %r failed", callback)
                first_error = first_error or exc
        if first_error is not None and raise_errors:
            raise first_error

    # -- inside the block ---------------------------------------------------------------

    @property
    def session(self) -> Session:
        """The SQLAlchemy session of this unit of work; valid only inside the block."""
        session = self._session
        if session is None:
            raise UsageError(
                "this UnitOfWork is not active; use it inside `with UnitOfWork() as uow:`"
            )
        if self._owner != self._current_owner():
            kind = self._owner_kind
            raise UsageError(
                f"this unit of work belongs to another {kind}; sessions and connections are "
                f"not safe to share, so open a unit of work in each {kind}"
            )
        return session

    @property
    def database(self) -> Database:
        """The database this unit of work runs on (the default one if none was given)."""
        return self._db if self._db is not None else (self._database or get_database())

    def flush(self) -> None:
        """Send pending changes to the server now, without committing.

        Use it to get generated primary keys, or to surface constraint errors at
        this point of the block rather than at commit.
        """
        self.session.flush()

    def commit(self) -> None:
        """Commit now; later work in the block runs in a new transaction.

        In a unit that joined an outer one, this only flushes: the outer one commits.
        """
        session = self.session
        if self._root is not None:
            session.flush()
            return
        if self.readonly:
            raise UsageError("a readonly unit of work cannot commit")
        if self._failure is not None:
            self._finish()  # rolls back and raises TransactionRolledBack
        commit_session(session)
        self._note_write()
        self._committed += self._pending
        self._pending = []

    def rollback(self) -> None:
        """Roll back now; the block writes nothing unless it does more work and commits.

        In a unit that joined an outer one, the whole transaction is rolled back when
        the outer one exits.
        """
        session = self.session
        if self._root is not None:
            self._root._doom(UsageError("rollback() was called in a joined unit of work"))
            return
        self._pending = []
        self._failure = None
        session.rollback()

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """Run a block in a SAVEPOINT: if it raises, only its own work is undone.

        The exception still propagates; catch it outside the ``with`` to carry on.
        """
        session = self.session
        owner = self._root if self._root is not None else self
        mark = len(owner._pending)
        try:
            with session.begin_nested():
                yield
        except BaseException:
            del owner._pending[mark:]
            raise

    def on_commit(self, callback: Callable[[], object]) -> None:
        """Run ``callback()`` after the transaction commits, never if it rolls back.

        Callbacks run in order once the connection is back in the pool, so slow work
        (sending mail, publishing events) holds no connection.
        """
        self.session  # noqa: B018 - checks that the unit is active and ours
        owner = self._root if self._root is not None else self
        owner._pending.append(callback)

    def defer(self, task: Any, /, **task_kwargs: Any) -> int:
        """Insert a procrastinate job in this unit's transaction and return its id.

        The job commits with the unit's data, or not at all: a rolled-back unit leaves
        no job, and workers see none before the COMMIT (a transactional outbox). It
        costs one round trip, procrastinate's insert, on the unit's own connection; a
        joined unit defers in the outer transaction. Needs ``pip install 'uow[jobs]'``.

        Args:
            task: a procrastinate task (``@app.task``), or one configured with
                ``task.configure(queue=, lock=, queueing_lock=, priority=, schedule_in=,
                schedule_at=)``.
            **task_kwargs: the task's arguments (JSON-serialisable).

        Raises:
            UsageError: outside the block, in a readonly unit, or ``task`` is no task.
            procrastinate.exceptions.AlreadyEnqueued: a job with the same queueing lock
                is waiting. The transaction is then aborted; to carry on without the
                job, defer inside ``with uow.savepoint():`` and catch it outside.
        """
        return defer(self._job_connection(), task, task_kwargs)

    def _job_connection(self) -> Connection:
        """The connection jobs are deferred on, once the checks pass."""
        session = self.session
        if self.readonly:
            raise UsageError(READONLY)
        return session.connection()

    def repository(self, model: type[M]) -> Repository[M]:
        """Return this unit's repository for ``model`` (the same one on each call)."""
        session = self.session
        repository = self._repositories.get(model)
        if repository is None:
            repository = self._remember(model, Repository(session, model))
        return repository

    def _remember(self, model: Any, repository: Repository[Any]) -> Repository[Any]:
        self._repositories.setdefault(model, repository)
        return repository

    def __repr__(self) -> str:
        state = "active" if self._session is not None else "idle"
        joined = ", joined" if self._root is not None else ""
        return f"<{type(self).__name__} {state}{joined} readonly={self.readonly}>"
