"""Jobs run by procrastinate workers, deferred in a unit of work (``pip install 'uow[jobs]'``).

In the application's jobs module::

    import uow.jobs

    app = uow.jobs.app()

    @app.task(queue="statements")
    def render_statement(account_id: int) -> None: ...

and in a request: ``with UnitOfWork() as unit: unit.defer(render_statement, account_id=7)``
(:meth:`uow.UnitOfWork.defer`). Workers run ``procrastinate --app=myapp.jobs.app worker``.

The connector reaches the server as the application's own connections do (the URL with
its hosts, TLS parameters and password, uow's connect timeout, keepalives,
``tcp_user_timeout`` and server-side timeouts), under an application_name of its own
kind, ``uow-jobs:<program>[pid]``, so the budget check and ``uow doctor`` count job
workers apart from web workers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._conninfo import connect_kwargs
from ._database import Database
from ._default import get_database
from ._engine.budget import job_worker_name, process_name
from ._errors import ConfigurationError
from ._jobs import require_procrastinate

require_procrastinate()

import procrastinate  # noqa: E402 - after the check that says what to install

if TYPE_CHECKING:
    from ._settings import Settings

__all__ = ["DEFAULT_MAX_SIZE", "DEFAULT_MIN_SIZE", "app", "connect_kwargs_for", "connector"]

DEFAULT_MIN_SIZE = 1
"""Connections a worker's pool keeps open."""
DEFAULT_MAX_SIZE = 2
"""Connections a worker's pool may open; one LISTEN connection comes on top."""


def connect_kwargs_for(settings: Settings, pid: int | None = None) -> dict[str, Any]:
    """``psycopg.connect()``'s keyword arguments for a job worker of these settings."""
    kwargs = connect_kwargs(settings)
    kwargs["application_name"] = process_name(job_worker_name(settings.application_name), pid)
    return kwargs


def connector(
    database: Database | None = None, **pool_kwargs: Any
) -> procrastinate.PsycopgConnector:
    """procrastinate's connector, reaching the server as ``database``'s connections do.

    A worker holds one LISTEN connection of its own (procrastinate's notifications of new
    jobs) plus this pool: ``max_size + 1`` connections at most, 3 by default. The pool
    serves the worker's fetches and status updates, not the jobs' own queries, which use
    the process's uow Database (``UnitOfWork()``). Connections open when the app opens
    (``app.open()``, ``app.open_async()``, the worker command); deferring a job in a unit
    of work (:meth:`uow.UnitOfWork.defer`) uses the unit's connection, not this pool.

    Args:
        database: whose settings to use; defaults to ``uow.get_database()``, looked up
            when the first connection opens (importing a jobs module connects nowhere).
        **pool_kwargs: for ``psycopg_pool.AsyncConnectionPool``: ``min_size`` (default
            1), ``max_size`` (default 2), ``timeout``, ``max_idle``...

    Raises:
        ConfigurationError: pool sizes that are not whole numbers with
            ``0 <= min_size <= max_size`` and ``max_size >= 1``, or connection parameters
            in ``pool_kwargs`` (they come from the database's settings).
    """
    given = {"conninfo", "kwargs"} & pool_kwargs.keys()
    if given:
        raise ConfigurationError(
            f"uow.jobs.connector() got {sorted(given)}, but the connection parameters come from "
            "the database's settings (its URL and UOW_* variables); pass pool sizes only, or "
            "build procrastinate.PsycopgConnector yourself"
        )
    min_size = pool_kwargs.pop("min_size", DEFAULT_MIN_SIZE)
    max_size = pool_kwargs.pop("max_size", max(DEFAULT_MAX_SIZE, min_size))
    if not (
        isinstance(min_size, int)
        and isinstance(max_size, int)
        and 0 <= min_size <= max_size
        and max_size >= 1
    ):
        raise ConfigurationError(
            f"uow.jobs.connector(min_size={min_size!r}, max_size={max_size!r}) is invalid; use "
            "whole numbers with 0 <= min_size <= max_size and max_size >= 1"
        )

    def kwargs() -> dict[str, Any]:
        # Read on each connect: the pid is the connecting process's (a module imported
        # before a fork), and the default database is looked up only when a connection
        # is made, so importing a jobs module needs no DATABASE_URL (unit tests, fakes).
        found = database if database is not None else get_database()
        return connect_kwargs_for(found.settings)

    return procrastinate.PsycopgConnector(
        kwargs=kwargs, min_size=min_size, max_size=max_size, **pool_kwargs
    )


def app(database: Database | None = None, **app_kwargs: Any) -> procrastinate.App:
    """``procrastinate.App(connector=connector(database), **app_kwargs)``."""
    return procrastinate.App(connector=connector(database), **app_kwargs)
