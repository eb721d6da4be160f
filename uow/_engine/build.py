"""Building an engine from Settings: uow's pool, liveness checks, timeouts, metrics, outage gate.

Every engine a Database owns (the primary's, its asyncio twin, each read replica's) is
built here, the same way, so each gets the same checks and the same error translation.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, Literal, overload

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from .._errors import ConfigurationError
from .._settings import Settings
from .budget import install_budget_gate, is_marked, process_name
from .classify import read_only_at_login, server_full, translate
from .liveness import install_checkout_checks
from .metrics import install_metrics
from .outage import ConnectGate
from .pool import AsyncQueuePool, FairQueuePool, share_limit
from .read_only import install_read_only_notes
from .servers import ServerMarks
from .session_state import install_session_state_warnings
from .timeouts import install_session_timeouts
from .watchdog import Deadlines

__all__ = ["build_engine", "transaction_options"]


@overload
def build_engine(
    settings: Settings,
    connect_args: Mapping[str, Any],
    count: Callable[[str], None],
    *,
    asynchronous: Literal[False] = False,
    share_with: Engine | None = None,
) -> Engine: ...
@overload
def build_engine(
    settings: Settings,
    connect_args: Mapping[str, Any],
    count: Callable[[str], None],
    *,
    asynchronous: Literal[True],
    share_with: Engine | None = None,
) -> AsyncEngine: ...
def build_engine(
    settings: Settings,
    connect_args: Mapping[str, Any],
    count: Callable[[str], None],
    *,
    asynchronous: bool = False,
    share_with: Engine | None = None,
) -> Engine | AsyncEngine:
    """A new engine on uow's pool, with uow's events installed; no connection is opened.

    Args:
        settings: what to connect to, and how.
        connect_args: the libpq parameters uow adds to the URL's (see ``uow._conninfo``).
        count: called with a counter's name on events the Database counts.
        asynchronous: build an AsyncEngine (psycopg 3's async driver) instead.
        share_with: an engine to the same server whose connection limit the new
            engine's pool shares: one ``pool_size + max_overflow`` for both.
    """
    options = dict(settings.engine_options)
    options.pop("connect_args", None)
    pool_options: dict[str, Any] = {
        "poolclass": AsyncQueuePool if asynchronous else FairQueuePool,
        "pool_size": settings.pool_size,
        "max_overflow": settings.max_overflow,
        "pool_timeout": settings.pool_timeout,
        # uow recycles with jitter itself (see _install_events).
        "pool_recycle": -1,
        # Replaced by uow's cheaper liveness check (see liveness).
        "pool_pre_ping": False,
        "pool_use_lifo": settings.pool_use_lifo,
        "echo": settings.echo,
    }
    pool_options.update(options)
    make = create_async_engine if asynchronous else create_engine
    try:
        engine = make(settings.url, connect_args=dict(connect_args), **pool_options)
    except TypeError as exc:
        raise ConfigurationError(
            f"engine_options {sorted(settings.engine_options)} were refused by "
            f"sqlalchemy.create_engine: {exc}"
        ) from None
    if share_with is not None:
        share_limit(share_with.pool, engine.pool)
    _install_events(
        engine.sync_engine if isinstance(engine, AsyncEngine) else engine,
        settings,
        count,
        # Only a name uow supplies gets the pid, never one written in the URL.
        marked=str(connect_args.get("application_name", "")),
    )
    return engine


def _install_events(
    engine: Engine, settings: Settings, count: Callable[[str], None], *, marked: str
) -> None:
    # First among the checkout checks: a connection to a server left behind is replaced
    # without pinging it (a hung server would not answer the ping).
    marks = ServerMarks()
    marks.install(engine)
    install_read_only_notes(engine)
    # A hung server answers neither a statement nor the ping: both are bounded.
    deadlines = Deadlines(settings.statement_timeout, marks, count)
    install_checkout_checks(
        engine,
        pre_ping=settings.pool_pre_ping,
        idle_window=settings.pool_pre_ping_idle,
        recycle=settings.pool_recycle,
        bound=lambda record: deadlines.pinging(record, max(2.0, settings.connect_timeout)),
    )
    deadlines.install(engine)  # after the checks: it watches connections handed out
    install_session_timeouts(engine, settings)
    if settings.pgbouncer == "transaction":
        install_session_state_warnings(engine)
    # Behind PgBouncer the pool sizes count client connections to PgBouncer, not server
    # connections: PgBouncer's own pool bounds those, so max_connections says nothing here.
    budget = None
    if settings.check_budget and settings.pgbouncer == "off":
        budget = install_budget_gate(engine, settings)
    metrics = install_metrics(engine)  # after the liveness check: see install_metrics
    outage = ConnectGate(settings.masked_url, count)

    @event.listens_for(engine, "do_connect")
    def _connect(dialect: Any, record: Any, cargs: Any, cparams: Any) -> Any:
        if budget is not None:
            budget.before_connect()  # a budget known not to fit: no backend started
            if marked and cparams.get("application_name") == marked and is_marked(marked):
                # At connect time, not build time: a forked worker is another process.
                cparams["application_name"] = process_name(marked)
        outage.before_connect()  # a fast failure is not an attempt: not timed
        started = time.monotonic()
        try:
            connection = dialect.connect(*cargs, **cparams)
        except Exception as exc:
            metrics.connect_done(started, ok=False)
            if server_full(exc) or read_only_at_login(exc):
                # The server answered: it is up, only full (or read-only, for now). Backing
                # off would refuse it for up to a second after that passes; callers retry.
                outage.succeeded()
            else:
                outage.failed(exc)
            raise
        metrics.connect_done(started, ok=True)
        outage.succeeded()
        return connection

    @event.listens_for(engine, "handle_error")
    def _translate(context: ExceptionContext) -> BaseException | None:
        return translate(context, settings, budget.known if budget is not None else None, marks)


def transaction_options(readonly: bool, isolation: str | None) -> dict[str, Any]:
    """Execution options for transactions with these characteristics (none by default)."""
    # psycopg applies both in its BEGIN statement: no extra round trip.
    options: dict[str, Any] = {}
    if isolation is not None:
        options["isolation_level"] = isolation
    if readonly:
        options["postgresql_readonly"] = True
    return options
