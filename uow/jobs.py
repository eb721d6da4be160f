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

import dataclasses
from typing import TYPE_CHECKING, Any

import psycopg

from ._conninfo import connect_kwargs
from ._database import Database
from ._default import get_database
from ._engine.budget import Budget, job_worker_name, process_name, read_budget
from ._errors import ConfigurationError
from ._jobs import require_procrastinate

require_procrastinate()

import procrastinate  # noqa: E402 - after the check that says what to install

if TYPE_CHECKING:
    from ._settings import Settings

__all__ = [
    "DEFAULT_MAX_SIZE",
    "DEFAULT_MIN_SIZE",
    "app",
    "check_budget",
    "connect_kwargs_for",
    "connector",
]

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


def check_budget(
    database: Database | None = None, *, processes: int = 1, max_size: int = DEFAULT_MAX_SIZE
) -> Budget | None:
    """Check, as a job worker starts, that its connections fit in what the server has left.

    Call it before running the worker: a worker that does not fit fails at once with the
    arithmetic, rather than when the server refuses connections under load. Explicit,
    not in the connector's first connect: psycopg_pool retries a failing connect in the
    background, and the reason would surface only as a log line and a 30 s timeout.

    Each job worker process needs ``max_size + 1`` connections (procrastinate's pool and
    its LISTEN connection) plus ``pool_size + max_overflow`` (the process's own uow
    Database, which the tasks' units of work use). Web workers' connections, and everyone
    else's, count as in use; the job workers of this application already connected are
    counted as processes (this check's own connection announces this one), so of N
    workers starting at once the last to check sees all N.

    Args:
        database: whose settings to use; defaults to ``uow.get_database()``.
        processes: how many job worker processes will run (at least those connected).
        max_size: the connector's ``max_size``.

    Returns:
        The numbers read, or None when the check does not apply (``UOW_CHECK_BUDGET=false``,
        or behind PgBouncer, whose own pool bounds the server's connections).

    Raises:
        ConfigurationError: the job workers do not fit, with the arithmetic and what to do.
    """
    settings = (database if database is not None else get_database()).settings
    if not settings.check_budget or settings.pgbouncer != "off":
        return None
    name = job_worker_name(settings.application_name)
    as_worker = settings.replace(application_name=name, processes=max(1, processes))
    with psycopg.connect(**connect_kwargs_for(settings)) as connection:
        budget = read_budget(connection, as_worker)
    per_process = max_size + 1 + settings.pool_size + settings.max_overflow
    budget = dataclasses.replace(budget, per_process=per_process)
    if budget.needed > budget.available:
        raise ConfigurationError(
            f"connection budget exceeded on {settings.masked_url}: {budget.processes} job "
            f"worker processes x (max_size {max_size} + 1 LISTEN + pool_size "
            f"{settings.pool_size} + max_overflow {settings.max_overflow} = {per_process}) = "
            f"{budget.needed} connections, but the server allows {budget.max_connections} "
            f"(max_connections) - {budget.reserved} reserved - {budget.used_by_others} in use "
            f"by web workers and other applications = {budget.available}. Run fewer job "
            "workers, give them a smaller pool (UOW_POOL_SIZE, UOW_MAX_OVERFLOW, max_size), "
            "raise max_connections, or put PgBouncer in front."
        )
    return budget
