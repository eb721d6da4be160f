"""Settings: one frozen, validated description of how to reach and pool PostgreSQL."""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Self

from ._conninfo import adopt_url_values, taken_from_url
from ._errors import ConfigurationError
from ._specs import (
    NAME_MAX,
    PGBOUNCER_MODES,
    Spec,
    about,
    attributes_section,
    check_application_name,
    check_pgbouncer,
    read_environment,
    setting,
    setting_factory,
    specs,
)
from ._urls import (
    mask_engine_options,
    mask_url,
    normalize_replicas,
    normalize_url,
    secret_parameters,
)

__all__ = ["Settings", "mask_engine_options", "mask_url", "secret_parameters"]


def _default_processes() -> int:
    raw = os.environ.get("WEB_CONCURRENCY", "")
    # isascii: int() refuses some characters isdigit() accepts ("²").
    return int(raw) if raw.isascii() and raw.isdigit() and int(raw) > 0 else 1


def _program() -> str:
    """The running program's name: the script's, or the package's under ``python -m pkg``."""
    program = Path(sys.argv[0]).stem if sys.argv and sys.argv[0] else ""
    if program == "__main__":
        # python -m examples.bank runs examples/bank/__main__.py: name the package.
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        name = getattr(spec, "name", "") or ""
        program = name.removesuffix(".__main__") or program
    return program


def _default_application_name() -> str:
    program = _program()
    # As PostgreSQL would show it: a program named "café" must not make the default invalid.
    program = "".join(c if " " <= c <= "~" else "?" for c in program)
    return f"uow:{program}"[:NAME_MAX] if program else "uow"


@dataclass(frozen=True, repr=False)
class Settings:
    """How uow connects to PostgreSQL and sizes its pool.

    Build it from keyword arguments or from the environment with :meth:`from_env`.
    Every value is checked on construction; a bad one raises
    :class:`~uow.ConfigurationError` naming the setting (or the environment variable it
    came from), the value and the accepted range. Durations are in seconds (floats
    allowed). The repr never shows the password. Settings are immutable and safe to
    share between threads. Each setting is declared once, with its environment
    variable, range, meaning and the reason for its default (``uow._specs.Spec``); the
    reference's settings table is generated from those declarations.
    """

    url: str = field(
        metadata=about(
            Spec(
                "DATABASE_URL",
                "url",
                "PostgreSQL URL; `postgres://` and `postgresql://` select psycopg 3. Its libpq "
                "parameters (`?options=-c ...`, `application_name`, several hosts...) are kept, "
                "and set the matching settings below.",
                "psycopg 3 is always used; the libpq parameters reach the server as written",
                accepted="`postgres://`, `postgresql://` or `postgresql+psycopg://`",
            )
        )
    )
    pool_size: int = setting(
        5,
        "UOW_POOL_SIZE",
        "count",
        "Connections kept open per process.",
        "per process: 10 workers x 5 = 50, well inside the default `max_connections=100`",
        unit="connections",
        low=1,
        high=1000,
    )
    max_overflow: int = setting(
        0,
        "UOW_MAX_OVERFLOW",
        "count",
        "Extra connections opened under bursts and closed when returned.",
        "a fixed-size pool: overflow connections are opened and closed on every burst, "
        "which costs the server a backend start each time",
        unit="connections",
        low=0,
        high=1000,
    )
    pool_timeout: float = setting(
        5.0,
        "UOW_POOL_TIMEOUT",
        "seconds",
        "Seconds to wait for a free connection before `PoolExhausted`.",
        "fail fast with `PoolExhausted` instead of piling requests up for SQLAlchemy's 30 s",
        low=0,
        high=3600,
        low_open=True,
    )
    pool_recycle: float = setting(
        300.0,
        "UOW_POOL_RECYCLE",
        "seconds",
        "Maximum age of a pooled connection; each connection is replaced at a random "
        "point between 90% and 100% of it, so the pool never reconnects all at once.",
        "under common idle limits (AWS NLB 350 s, PgBouncer `server_idle_timeout` 600 s)",
        low=1,
        high=86400,
        special=(-1,),
        special_doc="-1 for never",
    )
    pool_pre_ping: bool = setting(
        True,
        "UOW_PRE_PING",
        "flag",
        "Test a connection before handing it out.",
        "a connection killed by a restart, failover or `pg_terminate_backend` is replaced "
        "instead of failing the caller",
    )
    pool_pre_ping_idle: float = setting(
        1.0,
        "UOW_POOL_PRE_PING_IDLE",
        "seconds",
        "With `pool_pre_ping`, connections idle in the pool this long or longer are "
        "pinged (one round trip); ones returned more recently are checked by looking at "
        "their socket.",
        "a server that ended the session has closed the socket: pre-ping's guarantee "
        "without its round trip on busy connections",
        high=3600,
        zero="ping every time",
    )
    pool_use_lifo: bool = setting(
        False,
        "UOW_POOL_USE_LIFO",
        "flag",
        "Hand out the most recently returned connection first.",
        "SQLAlchemy's default; LIFO helps only with server-side idle timeouts",
    )
    connect_timeout: float = setting(
        5.0,
        "UOW_CONNECT_TIMEOUT",
        "seconds",
        "Seconds to wait for a new connection to be established (libpq waits at least 2).",
        "without it a dead host blocks a connect for minutes",
        low=1,
        high=3600,
    )
    statement_timeout: float = setting(
        30.0,
        "UOW_STATEMENT_TIMEOUT",
        "seconds",
        "Server-side limit on any one statement.",
        "a runaway query is stopped by the server; raise it for reports, or per unit "
        "with `timeout=`",
        high=86400,
        zero="off",
        resolution=0.001,
    )
    lock_timeout: float = setting(
        10.0,
        "UOW_LOCK_TIMEOUT",
        "seconds",
        "Server-side limit on waiting for a lock.",
        "a transaction waiting on a lock fails instead of queueing every request behind it",
        high=86400,
        zero="off",
        resolution=0.001,
    )
    idle_in_transaction_timeout: float = setting(
        60.0,
        "UOW_IDLE_IN_TRANSACTION_TIMEOUT",
        "seconds",
        "Seconds a transaction may sit idle before the server ends its session.",
        "a forgotten open transaction cannot pin a connection and block vacuum for ever",
        high=86400,
        zero="off",
        resolution=0.001,
    )
    long_transaction_threshold: float = setting(
        5.0,
        "UOW_LONG_TRANSACTION_THRESHOLD",
        "seconds",
        "Log a warning, naming where the unit of work was opened, when a transaction has "
        "been open this long, and again when it ends.",
        "long transactions hold locks and connections; five seconds is long for a request",
        high=86400,
        zero="off",
    )
    leak_detection_threshold: float = setting(
        30.0,
        "UOW_LEAK_DETECTION_THRESHOLD",
        "seconds",
        "Log a possible connection leak when a connection has been checked out this long.",
        "HikariCP's leak detection; few units of work mean to hold a connection that long",
        high=86400,
        zero="off",
    )
    leak_detection_stack: bool = setting(
        False,
        "UOW_LEAK_DETECTION_STACK",
        "flag",
        "Add the full stack of where the unit of work was opened to leak reports.",
        "capturing the stack costs time in every unit of work",
    )
    application_name: str = setting_factory(
        _default_application_name,
        "UOW_APPLICATION_NAME",
        "text",
        "Name shown in `pg_stat_activity`.",
        "`pg_stat_activity` shows who holds connections",
        default_doc="`uow:<program>`",
        accepted=f"printable ASCII, at most {NAME_MAX} characters",
        check_text=check_application_name,
    )
    processes: int = setting_factory(
        _default_processes,
        "UOW_PROCESSES",
        "count",
        "How many processes share the connection budget, each with its own pool; the "
        "check also counts the processes of the same application it sees connected.",
        "`WEB_CONCURRENCY` is gunicorn's and uvicorn's count of worker processes",
        unit="processes",
        low=1,
        high=10000,
        default_doc="`WEB_CONCURRENCY`, else 1",
    )
    check_budget: bool = setting(
        True,
        "UOW_CHECK_BUDGET",
        "flag",
        "Check that `processes x (pool_size + max_overflow)` fits in the server's "
        "`max_connections`: at boot with `db.check()` or `configure(check=True)`, else on "
        "the first connection; a failure is kept, not re-checked on every connection.",
        "a budget that does not fit fails at start-up with the numbers and what to "
        "change, not under load with `too many clients`",
    )
    failover_wait: float = setting(
        10.0,
        "UOW_FAILOVER_WAIT",
        "seconds",
        "How long `run_transaction` and `@transactional` keep retrying, by default, while "
        "the database is unavailable (down, failing over, full or read-only) or a "
        "connection is lost before COMMIT; their `wait=` overrides it.",
        "covers a planned switchover (about 1.5 s) many times over and a Patroni leader "
        "crash with `ttl: 10`; longer holds request threads past what most clients and "
        "load balancers still wait for",
        high=3600,
        zero="off: raise `DatabaseUnavailable` at once",
    )
    pgbouncer: str = setting(
        "off",
        "UOW_PGBOUNCER",
        "text",
        "PgBouncer's `pool_mode` when connecting through PgBouncer: `off` for a direct "
        "connection. Behind PgBouncer, uow sets the timeouts on each new connection "
        "(session) or in each transaction with `SET LOCAL` (transaction), where "
        "prepared statements are also turned off and the budget check is skipped.",
        "the timeouts cannot travel in the startup packet through PgBouncer",
        accepted=", ".join(f"`{mode}`" for mode in PGBOUNCER_MODES),
        check_text=check_pgbouncer,
    )
    echo: bool = setting(
        False,
        "UOW_ECHO",
        "flag",
        "Log every statement through SQLAlchemy's `echo`.",
        "statements can carry personal data; turn it on to debug",
    )
    replica_urls: tuple[str, ...] = setting(
        (),
        "UOW_REPLICA_URLS",
        "urls",
        "Read replicas (hot standbys) for `UnitOfWork(readonly=True)`, each checked like "
        "`url`, each with a pool of its own; readonly units take them in turn and fall "
        "back to the primary when none answers.",
        "no replicas: every unit uses the primary",
        accepted="URLs; a list, or comma-separated",
    )
    replica_read_after_write: float = setting(
        1.0,
        "UOW_REPLICA_READ_AFTER_WRITE",
        "seconds",
        "For this long after a unit of work that could write commits, readonly units in "
        "the same thread or task read from the primary.",
        "they see what was just written despite replication lag",
        high=3600,
        zero="off",
    )
    replica_max_lag: float = setting(
        0.0,
        "UOW_REPLICA_MAX_LAG",
        "seconds",
        "Skip a replica whose replay lags more than this behind the primary; read on a "
        "routed unit's connection at most once a second per replica (one statement more "
        "in that unit).",
        "off, as checking costs a statement",
        high=86400,
        zero="off",
    )
    engine_options: Mapping[str, Any] = field(
        default_factory=dict,
        hash=False,
        metadata=about(
            Spec(
                None,
                "mapping",
                "Extra keyword arguments passed untouched to `sqlalchemy.create_engine()`.",
                "anything uow has no opinion on goes to SQLAlchemy",
                default_doc="`{}`",
                accepted="mapping",
            )
        ),
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", normalize_url(self.url))
        object.__setattr__(self, "replica_urls", normalize_replicas(self.replica_urls))
        if not isinstance(self.engine_options, Mapping):
            # Not shown: it may hold a password.
            raise ConfigurationError(
                f"engine_options must be a mapping of create_engine() keyword arguments, "
                f"not {type(self.engine_options).__name__}"
            )
        self._check_values()
        adopt_url_values(self)
        if taken_from_url(self):
            self._check_values()  # what the URL set, in the same ranges
        object.__setattr__(self, "engine_options", MappingProxyType(dict(self.engine_options)))

    def _check_values(self) -> None:
        """Check every setting against its declaration, and store it in its plain type."""
        # Numbers are stored as plain ints and floats (a Decimal or a numpy value becomes
        # one), so what uses them later cannot fail on an exotic type.
        for name, spec in _SPECS.items():
            object.__setattr__(self, name, spec.check(name, getattr(self, name)))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Self:
        """Read settings from ``DATABASE_URL`` and ``UOW_*`` variables.

        Keyword arguments override the environment. Durations may be written as plain
        seconds (``"2.5"``) or with a unit (``"500ms"``, ``"30s"``, ``"5min"``).
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        if "url" not in overrides:
            url = env.get("DATABASE_URL")
            if not url:
                raise ConfigurationError(
                    "DATABASE_URL is not set; set it to postgresql://user:password@host:5432/dbname"
                    " or pass url= to uow.configure()"
                )
            values["url"] = url
        values.update(read_environment(env, _SPECS, skip=overrides))
        values.update(overrides)
        try:
            return cls(**values)
        except TypeError as exc:
            raise ConfigurationError(f"unknown setting: {exc}") from None

    def replace(self, **changes: Any) -> Self:
        """Return a copy with some settings changed (validated again).

        Values this object took from its URL go back to what they were given as, so a
        copy with another URL (a read replica's) takes that URL's values instead.
        """
        given = {k: v for k, v in taken_from_url(self).items() if k not in changes}
        try:
            return dataclasses.replace(self, **given, **changes)
        except TypeError as exc:
            raise ConfigurationError(f"unknown setting: {exc}") from None

    @property
    def masked_url(self) -> str:
        """The URL with its password replaced by ``***``, for logs and messages."""
        return mask_url(self.url)

    def __repr__(self) -> str:
        # Replica URLs carry passwords too: shown masked, like url.
        shown = {
            "url": self.masked_url,
            "replica_urls": tuple(mask_url(url) for url in self.replica_urls),
            "engine_options": mask_engine_options(self.engine_options),
        }
        parts = [
            f"{name}={shown.get(name, getattr(self, name))!r}"
            for name in _SPECS
            if name != "engine_options" or self.engine_options
        ]
        return f"Settings({', '.join(parts)})"


_SPECS = specs(Settings)
if Settings.__doc__:  # None under python -OO
    Settings.__doc__ += attributes_section(Settings)
