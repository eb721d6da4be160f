"""The connection budget: will every process's pool fit in the server's max_connections?

Many workers, each with its own pool, easily add up to more connections than the
server accepts, and the failure shows only under load, as ``too many clients``. uow
checks the sum against what the server reports: on demand (``Database.check()``, the
boot hook), else once per engine on its first connection; a failed check is remembered
and raised again without a round trip until ``check()`` runs again or the pool is disposed.

How many processes share the budget is the larger of what the settings say
(``UOW_PROCESSES``, ``WEB_CONCURRENCY``) and what the server sees: uow's own
application names (``uow`` and ``uow:<anything>``) carry the process id, ``uow:app[4242]``,
so the check counts the processes of the same application already connected. A worker
announces itself by holding its checking connection open, so of N workers booting at
once the last to check sees all N, whatever the configuration says.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any
from weakref import WeakKeyDictionary

from sqlalchemy import Engine, event

from .._errors import ConfigurationError
from .._settings import Settings
from .pool import _LimitedPool

__all__ = [
    "Budget",
    "BudgetGate",
    "budget_gate",
    "install_budget_gate",
    "is_job_worker",
    "is_marked",
    "job_worker_name",
    "measure_budget",
    "process_kind",
    "process_name",
    "read_budget",
]

# "[" + a pid (pid_max is at most 2**22, 7 digits) + "]" must fit in PostgreSQL's 63 bytes,
# and every process must cut the name at the same place to be counted as one application.
_BASE_MAX = 63 - 9
JOBS = "uow-jobs"  # the application_name prefix of job workers (uow.jobs.connector)

_QUERY = """
SELECT current_setting('max_connections')::int,
       current_setting('superuser_reserved_connections')::int,
       coalesce(current_setting('reserved_connections', true), '0')::int,
       (SELECT count(*) FROM pg_stat_activity
         WHERE backend_type = 'client backend' AND application_name <> %(name)s
           AND NOT (left(application_name, %(length)s) = %(base)s
                    AND substr(application_name, %(length)s + 1) ~ '^\\[[0-9]+\\]$'))::int,
       (SELECT count(DISTINCT (coalesce(host(client_addr), ''), application_name))
          FROM pg_stat_activity
         WHERE backend_type = 'client backend'
           AND left(application_name, %(length)s) = %(base)s
           AND substr(application_name, %(length)s + 1) ~ '^\\[[0-9]+\\]$')::int
"""


def is_marked(name: str) -> bool:
    """Whether uow adds the process id to this application_name (uow's own names only)."""
    # A name the user chose is shown as chosen: dashboards and filters match it exactly.
    return name in ("uow", JOBS) or name.startswith(("uow:", f"{JOBS}:"))


def process_kind(name: str) -> str:
    """``"job worker"``, ``"web worker"`` or ``""``: the kind of process an application_name
    (as ``pg_stat_activity`` shows it, pid included) belongs to."""
    if is_job_worker(name):
        return "job worker"
    if name == "uow" or name.startswith(("uow:", "uow[")):
        return "web worker"
    return ""


def job_worker_name(name: str) -> str:
    """The application_name a job worker of application ``name`` sends, before its pid.

    ``uow:bank`` gives ``uow-jobs:bank``, a chosen ``bank`` gives ``uow-jobs:bank``: a kind
    of its own, so the web workers' budget check counts job workers as connections in use
    by others, and ``uow doctor`` shows them apart.
    """
    rest = name[len("uow") :] if is_marked(name) else f":{name}"
    return f"{JOBS}{rest}"[:_BASE_MAX]


def is_job_worker(name: str) -> bool:
    """Whether ``name`` (as ``pg_stat_activity`` shows it) is a uow job worker's."""
    return name == JOBS or name.startswith((f"{JOBS}:", f"{JOBS}["))


def process_name(name: str, pid: int | None = None) -> str:
    """``name`` as this process sends it: ``uow:app[4242]``."""
    return f"{name[:_BASE_MAX]}[{os.getpid() if pid is None else pid}]"


@dataclass(frozen=True)
class Budget:
    """What the server allows and what this application asks for."""

    max_connections: int
    reserved: int
    """Slots kept for superusers and roles with pg_use_reserved_connections."""
    used_by_others: int
    """Client connections of other applications right now."""
    processes: int
    """Processes sharing the budget: the larger of ``configured`` and ``connected``."""
    per_process: int
    """pool_size + max_overflow."""
    server: str = ""
    """The server's URL, password masked, for messages."""
    configured: int = 1
    """What the settings say: ``UOW_PROCESSES``, else ``WEB_CONCURRENCY``, else 1."""
    connected: int = 0
    """Processes of this application connected now (0 when its name carries no pid)."""

    @property
    def needed(self) -> int:
        return self.processes * self.per_process

    @property
    def available(self) -> int:
        return self.max_connections - self.reserved - self.used_by_others

    def check(self) -> None:
        """Raise ConfigurationError if the pools cannot all be open at once."""
        if self.needed <= self.available:
            return
        where = f" on {self.server}" if self.server else ""
        counted = ""
        if self.connected > self.configured:
            counted = (
                f" (the settings say {self.configured}, but {self.connected} processes of "
                "this application are connected: set UOW_PROCESSES or WEB_CONCURRENCY to "
                "the number of workers)"
            )
        raise ConfigurationError(
            f"connection budget exceeded{where}: {self.processes} processes{counted} x "
            f"(pool_size + max_overflow = {self.per_process}) = {self.needed} connections, "
            f"but the server allows {self.max_connections} (max_connections) - "
            f"{self.reserved} reserved - {self.used_by_others} used by other applications "
            f"= {self.available}. Lower UOW_POOL_SIZE or UOW_MAX_OVERFLOW, run fewer "
            "processes, raise max_connections, or put PgBouncer in front. (UOW_PROCESSES "
            "tells uow how many processes share the budget; UOW_CHECK_BUDGET=false turns "
            "this check off.)"
        )


def read_budget(dbapi_connection: Any, settings: Settings) -> Budget:
    """Ask the server, on a raw driver connection, for the numbers of the budget."""
    name = settings.application_name
    base = name[:_BASE_MAX] if is_marked(name) else "\x01"  # matches no name: no NUL in names
    # A plain cursor works on the sync driver and on SQLAlchemy's asyncio adapter alike.
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(_QUERY, {"name": name, "base": base, "length": len(base)})
        max_connections, superuser, reserved, others, connected = cursor.fetchone()
    finally:
        cursor.close()
        dbapi_connection.rollback()  # leave the new connection idle, not in a transaction
    return Budget(
        max_connections=max_connections,
        reserved=superuser + reserved,
        used_by_others=others,
        processes=max(settings.processes, connected),
        per_process=settings.pool_size + settings.max_overflow,
        server=settings.masked_url,
        configured=settings.processes,
        connected=connected,
    )


class BudgetGate:
    """The budget check of one engine: once, on its first connection; a failure is kept.

    Thread-safe: threads opening the first connections at once wait for one check.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._checked = False
        self._failure: str | None = None
        self.known: Budget | None = None
        """The server's numbers as last read, for a full server's message."""

    def before_connect(self) -> None:
        """Raise the remembered failure, if any, before a connection is opened."""
        failure = self._failure
        if failure is not None:
            # A new instance each time: re-raising one would grow its traceback forever.
            raise ConfigurationError(failure)

    def on_connect(self, dbapi_connection: Any) -> None:
        """Check the budget on a new connection, unless it has been checked already."""
        if self._checked:
            return
        with self._lock:
            if self._checked:
                return
            if self._failure is None:
                try:
                    self.known = read_budget(dbapi_connection, self._settings)
                    self.known.check()
                except ConfigurationError as exc:
                    self._failure = str(exc)
                else:
                    self._checked = True
                    return
        dbapi_connection.close()  # the pool would leave it to the garbage collector
        self.before_connect()

    def begin(self) -> None:
        """A check is being made elsewhere: new connections skip theirs until ``record``."""
        with self._lock:
            self._checked, self._failure = True, None

    def record(self, budget: Budget | None) -> None:
        """Adopt the outcome of a check made elsewhere; ``None`` starts over."""
        with self._lock:
            failure: str | None = None
            if budget is not None:
                self.known = budget
                try:
                    budget.check()
                except ConfigurationError as exc:
                    failure = str(exc)
            self._checked = budget is not None and failure is None
            self._failure = failure


_gates: WeakKeyDictionary[Engine, BudgetGate] = WeakKeyDictionary()


def install_budget_gate(engine: Engine, settings: Settings) -> BudgetGate:
    """Check ``engine``'s budget on its first connection; forget the outcome on dispose."""
    gate = _gates[engine] = BudgetGate(settings)

    @event.listens_for(engine, "connect")
    def _check_budget(dbapi_connection: Any, record: Any) -> None:
        gate.on_connect(dbapi_connection)

    def _forget(*_: object) -> None:
        gate.record(None)

    if isinstance(engine.pool, _LimitedPool):
        engine.pool.on_recreate(_forget)
    else:  # a pool class from engine_options
        event.listen(engine, "engine_disposed", _forget)

    return gate


def budget_gate(engine: Engine) -> BudgetGate | None:
    """The budget gate installed on ``engine``, if its budget is checked."""
    return _gates.get(engine)


def measure_budget(engine: Engine, connectable: Engine, settings: Settings) -> Budget:
    """Read ``engine``'s budget through ``connectable`` (it or a view of it) and keep it.

    The outcome is recorded in the engine's gate, so new connections neither check again
    nor, after a failure, connect at all; the checking connection is not pooled then.
    """
    gate = budget_gate(engine)
    if gate is not None:
        gate.begin()  # one query: the new connection need not check too
    try:
        with connectable.connect() as connection:
            budget = read_budget(connection.connection.dbapi_connection, settings)
            if budget.needed > budget.available:
                connection.invalidate()  # not left in the pool for units to use
    except BaseException:
        if gate is not None:
            gate.record(None)
        raise
    if gate is not None:
        gate.record(budget)
    return budget
