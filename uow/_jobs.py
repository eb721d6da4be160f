"""Deferring procrastinate jobs on a unit of work's own connection (``uow.defer``).

The job is inserted by procrastinate's own query (``procrastinate_defer_jobs_v1``) on
the connection the unit already holds, inside its transaction: it commits or rolls
back with the unit's data, and no worker sees it before the COMMIT. procrastinate is
imported here only when a job is deferred, so ``import uow`` never needs it.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from typing import TYPE_CHECKING, Any
from weakref import WeakKeyDictionary

import psycopg
from sqlalchemy import Connection
from sqlalchemy.util import greenlet_spawn

from ._errors import ConfigurationError, UsageError

if TYPE_CHECKING:
    from procrastinate.jobs import Job, JobDeferrer
    from procrastinate.manager import JobManager

__all__ = [
    "INSTALL",
    "READONLY",
    "DeferredJob",
    "check_json",
    "defer",
    "defer_async",
    "job_of",
    "raise_as_sqlalchemy_would",
    "require_procrastinate",
]

INSTALL = "pip install 'uow[jobs]'"
READONLY = (
    "a readonly unit of work cannot defer a job (it would never be committed); "
    "open the unit of work without readonly=True"
)


def require_procrastinate() -> None:
    """Raise ConfigurationError, saying what to install, if procrastinate is missing."""
    try:
        import procrastinate  # noqa: F401, PLC0415 - only the jobs feature needs it
    except ImportError as exc:
        raise ConfigurationError(
            f"uow's jobs need procrastinate, which is not installed: {INSTALL}"
        ) from exc


@dataclasses.dataclass(frozen=True)
class DeferredJob:
    """A job as procrastinate would insert it; what the in-memory fake records."""

    id: int
    task_name: str
    """The task's name (``module.function`` unless the task was named)."""
    kwargs: dict[str, Any]
    """The task's arguments: the task's configured ones updated with defer()'s."""
    queue: str
    lock: str | None = None
    queueing_lock: str | None = None
    priority: int = 0
    scheduled_at: datetime.datetime | None = None
    """When it may run at the earliest (``schedule_at``/``schedule_in``); None: at once."""


def _deferrer(task: Any) -> JobDeferrer:
    """``task`` as a JobDeferrer: a Task is configured with its own defaults."""
    # Duck-typed, not isinstance: the fake reads tasks without importing procrastinate.
    if hasattr(task, "job") and hasattr(task, "job_manager"):
        return task  # type: ignore[no-any-return]
    if hasattr(task, "configure") and hasattr(task, "blueprint"):
        return task.configure()  # type: ignore[no-any-return]
    raise UsageError(
        f"defer() takes a procrastinate task (a function decorated with @app.task) or a "
        f"configured one (task.configure(queue=..., lock=...)); got {type(task).__name__}"
    )


def job_of(task: Any, task_kwargs: dict[str, Any]) -> Job:
    """The job ``task`` would insert with these arguments (id None)."""
    return _deferrer(task).make_new_job(**task_kwargs)


# The connector that runs the insert must suit the connection's kind. An app's
# PsycopgConnector, once opened (in a worker, whose tasks may defer more jobs), runs its
# sync calls as async queries, which a sync connection cannot take; an app built on
# SyncPsycopgConnector has no async path. Then a connector of the right kind, with the
# app's JSON functions, inserts instead: neither opens a pool to run on a given connection.
_substitutes: dict[bool, WeakKeyDictionary[Any, JobManager]] = {
    False: WeakKeyDictionary(),
    True: WeakKeyDictionary(),
}


def _manager(deferrer: JobDeferrer, *, asynchronous: bool) -> JobManager:
    from procrastinate import PsycopgConnector, SyncPsycopgConnector  # noqa: PLC0415
    from procrastinate.manager import JobManager  # noqa: PLC0415

    manager = deferrer.job_manager
    connector = manager.connector
    if asynchronous:
        if isinstance(connector, PsycopgConnector):
            return manager
    elif isinstance(connector.get_sync_connector(), SyncPsycopgConnector):
        return manager
    made = _substitutes[asynchronous]
    found = made.get(connector)
    if found is None:
        dumps = getattr(connector, "_json_dumps", None)
        loads = getattr(connector, "_json_loads", None)
        kind = PsycopgConnector if asynchronous else SyncPsycopgConnector
        found = made[connector] = JobManager(kind(json_dumps=dumps, json_loads=loads))
    return found


def defer(connection: Connection, task: Any, task_kwargs: dict[str, Any]) -> int:
    """Insert ``task``'s job on ``connection``'s psycopg Connection and return its id."""
    require_procrastinate()
    from procrastinate.jobs import JobDeferrer  # noqa: PLC0415

    deferrer = _deferrer(task)
    manager = _manager(deferrer, asynchronous=False)
    driver = connection.connection.driver_connection
    try:
        return JobDeferrer(manager, deferrer.job, connection=driver).defer(**task_kwargs)
    except TypeError:
        check_json({**deferrer.job.task_kwargs, **task_kwargs})
        raise
    except Exception as exc:
        raise_as_sqlalchemy_would(connection, exc)
        raise


async def defer_async(connection: Connection, task: Any, task_kwargs: dict[str, Any]) -> int:
    """Insert ``task``'s job on ``connection``'s psycopg AsyncConnection; return its id.

    ``connection`` is the sync Connection of an AsyncSession's ``sync_session``.
    """
    require_procrastinate()
    from procrastinate.jobs import JobDeferrer  # noqa: PLC0415

    deferrer = _deferrer(task)
    manager = _manager(deferrer, asynchronous=True)
    driver = connection.connection.driver_connection
    try:
        return await JobDeferrer(manager, deferrer.job, connection=driver).defer_async(
            **task_kwargs
        )
    except TypeError:
        check_json({**deferrer.job.task_kwargs, **task_kwargs})
        raise
    except Exception as exc:
        await greenlet_spawn(raise_as_sqlalchemy_would, connection, exc)
        raise


def check_json(task_kwargs: dict[str, Any]) -> None:
    """Raise UsageError if the arguments are not JSON values (nothing was sent then)."""
    try:
        json.dumps(task_kwargs)
    except (TypeError, ValueError) as exc:
        raise UsageError(
            f"a job's arguments are stored as JSON, and {exc}; pass JSON values (str, int, "
            "float, bool, None, lists and dicts of them): an id rather than an object, "
            "date.isoformat() rather than a date. Nothing was sent; the unit of work goes on"
        ) from exc


def raise_as_sqlalchemy_would(connection: Connection, exc: Exception) -> None:
    """Raise the database error behind procrastinate's ``exc`` as the unit's statements do.

    procrastinate wraps a driver error in its ConnectorException. Handed to SQLAlchemy's
    error handling, it gets what any statement of the unit gets: uow's classification
    (ConnectionLost, SerializationFailure, StatementTimeout... which run_transaction
    retries) and a connection the server ended discarded, not pooled. Returns if
    ``exc`` is no such error (AlreadyEnqueued, a task argument that is not JSON).
    """
    from procrastinate.exceptions import ConnectorException  # noqa: PLC0415

    cause = exc.__cause__
    if isinstance(exc, ConnectorException) and isinstance(cause, psycopg.Error):
        # SQLAlchemy's own path for a failed statement: handle_error hooks (uow's
        # translation), disconnect detection, invalidation. Private, but stable since
        # SQLAlchemy 1.4 and pinned below 2.2 in pyproject.toml.
        connection._handle_dbapi_exception(cause, None, None, None, None)
