"""Settings: one frozen, validated description of how to reach and pool PostgreSQL."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Self

from sqlalchemy.engine import make_url

from ._conninfo import url_values, user_parameters
from ._errors import ConfigurationError
from ._urls import (
    mask_engine_options,
    mask_url,
    normalize_replicas,
    normalize_url,
    secret_parameters,
)
from ._values import check_flag, check_number, shown

__all__ = ["Settings", "mask_engine_options", "mask_url", "secret_parameters"]

logger = logging.getLogger("uow")

_ENV_PREFIX = "UOW_"
# UOW_ variables read by other parts of uow (tests, migrations), not settings.
_NOT_SETTINGS = ("UOW_TEST_", "UOW_MIGRATIONS_")


def _default_processes() -> int:
    raw = os.environ.get("WEB_CONCURRENCY", "")
    # isascii: int() refuses some characters isdigit() accepts ("²").
    return int(raw) if raw.isascii() and raw.isdigit() and int(raw) > 0 else 1


def _default_application_name() -> str:
    program = Path(sys.argv[0]).stem if sys.argv and sys.argv[0] else ""
    # As PostgreSQL would show it: a program named "café" must not make the default invalid.
    program = "".join(c if " " <= c <= "~" else "?" for c in program)
    return f"uow:{program}"[:63] if program else "uow"


@dataclass(frozen=True, repr=False)
class Settings:
    """How uow connects to PostgreSQL and sizes its pool.

    Build it from keyword arguments or from the environment with :meth:`from_env`.
    Every value is checked on construction; a bad one raises
    :class:`~uow.ConfigurationError` naming the setting, the value and the accepted
    range. Durations are in seconds (floats allowed). The repr never shows the
    password. Settings are immutable and safe to share between threads.
    """

    url: str
    """PostgreSQL URL (``DATABASE_URL``); ``postgres://`` and ``postgresql://`` select psycopg 3.
    Its libpq parameters (``?options=-c ...``, ``application_name``, several hosts...) are
    kept, and set the matching settings below; see :mod:`uow._conninfo` for the precedence."""

    pool_size: int = 5
    """Connections kept open per process (``UOW_POOL_SIZE``), 1 to 1000."""

    max_overflow: int = 0
    """Extra connections opened under bursts and closed when returned (``UOW_MAX_OVERFLOW``),
    0 to 1000. 0 by default: overflow connections are opened and closed on every burst."""

    pool_timeout: float = 5.0
    """Seconds to wait for a free connection before :class:`~uow.PoolExhausted`
    (``UOW_POOL_TIMEOUT``), over 0 and at most 3600."""

    pool_recycle: float = 300.0
    """Maximum age in seconds of a pooled connection (``UOW_POOL_RECYCLE``); each
    connection is replaced at a random point between 90% and 100% of it, so the pool
    never reconnects all at once. -1 disables recycling."""

    pool_pre_ping: bool = True
    """Test a connection before handing it out (``UOW_PRE_PING``), so one killed by a
    server restart or a failover is replaced instead of failing the caller."""

    pool_pre_ping_idle: float = 1.0
    """With ``pool_pre_ping``, connections idle in the pool this many seconds or more are
    pinged (one round trip); ones returned more recently are checked without a round
    trip, by looking at their socket (``UOW_POOL_PRE_PING_IDLE``). 0 pings every time."""

    pool_use_lifo: bool = False
    """Hand out the most recently returned connection first (``UOW_POOL_USE_LIFO``)."""

    connect_timeout: float = 5.0
    """Seconds to wait for a new connection to be established (``UOW_CONNECT_TIMEOUT``),
    at least 1; without it a dead host blocks for minutes."""

    statement_timeout: float = 30.0
    """Server-side limit in seconds on any one statement (``UOW_STATEMENT_TIMEOUT``);
    0 disables it."""

    lock_timeout: float = 10.0
    """Server-side limit in seconds on waiting for a lock (``UOW_LOCK_TIMEOUT``); 0 disables it."""

    idle_in_transaction_timeout: float = 60.0
    """Seconds a transaction may sit idle before the server ends its session
    (``UOW_IDLE_IN_TRANSACTION_TIMEOUT``); 0 disables it."""

    long_transaction_threshold: float = 5.0
    """Log a warning, naming where the unit of work was opened, when a transaction has
    been open this many seconds (``UOW_LONG_TRANSACTION_THRESHOLD``); 0 turns it off."""

    leak_detection_threshold: float = 30.0
    """Log a possible connection leak when a connection has been checked out this many
    seconds (``UOW_LEAK_DETECTION_THRESHOLD``), as HikariCP does; 0 turns it off."""

    leak_detection_stack: bool = False
    """Add the full stack of where the unit of work was opened to leak reports
    (``UOW_LEAK_DETECTION_STACK``); off by default, as capturing it costs time."""

    application_name: str = field(default_factory=_default_application_name)
    """Name shown in ``pg_stat_activity`` (``UOW_APPLICATION_NAME``), printable ASCII, at
    most 63 characters. Defaults to ``uow:<program name>``."""

    processes: int = field(default_factory=_default_processes)
    """How many processes share the connection budget, each with its own pool
    (``UOW_PROCESSES``; default ``WEB_CONCURRENCY``, gunicorn's and uvicorn's variable,
    else 1), 1 to 10000."""

    check_budget: bool = True
    """On the first connection, check that ``processes x (pool_size + max_overflow)``
    fits in the server's ``max_connections`` (``UOW_CHECK_BUDGET``)."""

    pgbouncer: str = "off"
    """PgBouncer's ``pool_mode`` when connecting through PgBouncer (``UOW_PGBOUNCER``):
    ``"off"`` (a direct connection), ``"session"`` or ``"transaction"``. Behind PgBouncer
    the timeouts cannot travel in the startup packet, so uow sets them on each new
    connection (session) or in each transaction with ``SET LOCAL``, one round trip
    (transaction); in transaction mode psycopg's prepared statements are also turned off
    and the connection budget check is skipped (PgBouncer's pool bounds the server's
    connections). See the README's "PgBouncer" section."""

    echo: bool = False
    """Log every statement through SQLAlchemy's ``echo`` (``UOW_ECHO``)."""

    replica_urls: tuple[str, ...] = ()
    """Read replicas (hot standbys) for ``UnitOfWork(readonly=True)`` (``UOW_REPLICA_URLS``,
    comma-separated), each checked like ``url``. Each gets a pool of its own with the pool
    settings above; readonly units take them in turn and fall back to the primary when
    none answers. A list or a comma-separated string is accepted."""

    replica_read_after_write: float = 1.0
    """For this many seconds after a unit of work that could write commits, readonly
    units in the same thread or task read from the primary, so they see what was just
    written despite replication lag (``UOW_REPLICA_READ_AFTER_WRITE``); 0 turns it off."""

    replica_max_lag: float = 0.0
    """Skip a replica whose replay lags more than this many seconds behind the primary
    (``UOW_REPLICA_MAX_LAG``); 0 turns the check off. The lag is read on a routed unit's
    connection at most once a second per replica: one statement more in that unit."""

    engine_options: Mapping[str, Any] = field(default_factory=dict, hash=False)
    """Extra keyword arguments passed untouched to :func:`sqlalchemy.create_engine`."""

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
        _adopt_url_values(self)
        if _from_url(self):
            self._check_values()  # what the URL set, in the same ranges
        _check_pgbouncer(self)
        object.__setattr__(self, "engine_options", MappingProxyType(dict(self.engine_options)))

    def _check_values(self) -> None:
        """Check every number, flag and name, and store them in their plain types."""
        # Numbers are stored as plain ints and floats (a Decimal or a numpy value becomes
        # one), so what uses them later cannot fail on an exotic type.
        self._number("replica_read_after_write", 0.0, 3600.0)
        self._number("replica_max_lag", 0.0, 86400.0)
        self._number("pool_size", 1, 1000, integer=True)
        self._number("max_overflow", 0, 1000, integer=True)
        self._number("pool_timeout", 0.0, 3600.0, low_open=True)
        self._number("pool_recycle", 1.0, 86400.0, special=(-1,), extra="or -1")
        self._number("pool_pre_ping_idle", 0.0, 3600.0)
        self._number("processes", 1, 10000, integer=True)
        self._number("connect_timeout", 1.0, 3600.0)
        for name in ("long_transaction_threshold", "leak_detection_threshold"):
            self._number(name, 0.0, 86400.0)
        for name in ("statement_timeout", "lock_timeout", "idle_in_transaction_timeout"):
            if 0 < self._number(name, 0.0, 86400.0) < 0.001:
                raise ConfigurationError(
                    f"{name}={getattr(self, name)!r} is below PostgreSQL's 1 ms resolution; "
                    "use 0 to disable it or a value of at least 0.001 seconds"
                )
        for name in ("pool_pre_ping", "pool_use_lifo", "echo", "check_budget"):
            check_flag(name, getattr(self, name))
        check_flag("leak_detection_stack", self.leak_detection_stack)
        object.__setattr__(self, "application_name", _check_application_name(self.application_name))

    def _number(self, name: str, low: float, high: float, **options: Any) -> float:
        value = check_number(name, getattr(self, name), low, high, **options)
        object.__setattr__(self, name, value)
        return value

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
        by_variable = {f"{_ENV_PREFIX}{f.name.upper()}": f for f in _ENV_FIELDS}
        by_variable["UOW_PRE_PING"] = _FIELDS["pool_pre_ping"]
        for variable, raw in env.items():
            if not variable.startswith(_ENV_PREFIX) or variable.startswith(_NOT_SETTINGS):
                continue
            setting = by_variable.get(variable)
            if setting is None:
                logger.warning(
                    "ignoring unknown setting %s; known: %s", variable, sorted(by_variable)
                )
                continue
            if setting.name not in overrides:
                values[setting.name] = _parse(variable, setting, raw)
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
        given = {k: v for k, v in _from_url(self).items() if k not in changes}
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
        shown = {"replica_urls": tuple(mask_url(url) for url in self.replica_urls)}
        parts = [f"url={self.masked_url!r}"]
        parts += [f"{f.name}={shown.get(f.name, getattr(self, f.name))!r}" for f in _ENV_FIELDS]
        if self.engine_options:
            parts.append(f"engine_options={mask_engine_options(self.engine_options)!r}")
        return f"Settings({', '.join(parts)})"


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
_ENV_FIELDS = [f for f in dataclasses.fields(Settings) if f.name not in ("url", "engine_options")]


def _adopt_url_values(settings: Settings) -> None:
    """Take the values the URL sets for uow's settings (see uow._conninfo's precedence)."""
    found = url_values(user_parameters(make_url(settings.url), settings.engine_options))
    given: dict[str, Any] = {}
    for name, value in found.items():
        current = getattr(settings, name)
        if current != value:
            _check_not_given(name, current, value, "url")
            given[name] = current
            object.__setattr__(settings, name, value)
    object.__setattr__(settings, "_from_url", given)
    # Each replica's own URL values are checked now, against the values given.
    for i, replica in enumerate(settings.replica_urls):
        found = url_values(user_parameters(make_url(replica), settings.engine_options))
        for name, value in found.items():
            current = given.get(name, getattr(settings, name))
            if current != value:
                _check_not_given(name, current, value, f"replica_urls[{i}]")


def _check_not_given(name: str, current: object, value: object, where: str) -> None:
    # A setting still at its default was not given: it yields to the URL.
    field_ = _FIELDS[name]
    factory = field_.default_factory
    default = field_.default if factory is dataclasses.MISSING else factory()
    if current != default:
        raise ConfigurationError(
            f"{name} is set twice: {current!r} by the {name} setting "
            f"({_ENV_PREFIX}{name.upper()}) and {value!r} by {where}'s parameters; "
            "remove one of them"
        )


def _from_url(settings: Settings) -> dict[str, Any]:
    found: dict[str, Any] = getattr(settings, "_from_url", {})
    return found


_PGBOUNCER_MODES = ("off", "session", "transaction")


def _check_pgbouncer(settings: Settings) -> None:
    mode = settings.pgbouncer
    normalized = str.__str__(mode).strip().lower() if isinstance(mode, str) else None
    if normalized == "statement":
        raise ConfigurationError(
            "pgbouncer='statement' is not supported: PgBouncer's statement mode forbids "
            "transactions of more than one statement, and a unit of work is a transaction. "
            "Use pool_mode = transaction in pgbouncer.ini and UOW_PGBOUNCER=transaction"
        )
    if normalized not in _PGBOUNCER_MODES:
        raise ConfigurationError(
            f"pgbouncer={shown(mode)} is invalid; use one of {', '.join(_PGBOUNCER_MODES)} "
            "(PgBouncer's pool_mode, or off for a direct connection)"
        )
    object.__setattr__(settings, "pgbouncer", normalized)


# PostgreSQL keeps NAMEDATALEN - 1 bytes of application_name and shows each character
# outside printable ASCII as "?"; libpq cannot send a NUL at all.
_NAME_MAX = 63
_PRINTABLE = re.compile(r"[ -~]*")


def _check_application_name(name: object) -> str:
    text = str.__str__(name) if isinstance(name, str) else None  # a plain str, from a subclass
    if text is not None and len(text) <= _NAME_MAX and _PRINTABLE.fullmatch(text):
        return text
    raise ConfigurationError(
        f"application_name={shown(name)} is invalid; use a string of at most {_NAME_MAX} "
        "characters, printable ASCII only (PostgreSQL shows other characters as '?' and "
        "cannot carry NUL or control characters)"
    )


_DURATION = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(ms|s|min)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "min": 60.0, None: 1.0}
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _parse(variable: str, setting: dataclasses.Field[Any], raw: str) -> object:
    if not isinstance(raw, str):  # a mapping passed as environ may hold values of any type
        return raw
    kind = setting.type
    if kind == "bool":
        if raw.strip().lower() in _TRUE:
            return True
        if raw.strip().lower() in _FALSE:
            return False
        raise ConfigurationError(
            f"{variable}={shown(raw)} is invalid; use true/false, 1/0, yes/no, on/off"
        )
    if kind == "int":
        try:
            return int(raw)
        except ValueError:  # not a number, or more digits than Python converts
            raise ConfigurationError(
                f"{variable}={shown(raw)} is invalid; use a whole number"
            ) from None
    if kind == "float":
        match = _DURATION.match(raw)
        seconds = float(match[1]) * _UNIT_SECONDS[match[2]] if match else math.inf
        if not math.isfinite(seconds):  # not a duration, or too many digits for a float
            raise ConfigurationError(
                f"{variable}={shown(raw)} is invalid; use seconds such as 2.5, or 500ms, 30s, 5min"
            )
        return seconds
    return raw
