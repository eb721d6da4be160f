"""What a pool's snapshot holds: :class:`PoolStats`, each field declared once.

Each field carries a :class:`Metric` (kind, unit, meaning, HikariCP's and Prometheus'
names), from which ``PoolStats``' docstring, ``uow.prometheus``, the database's own
counters and the reference's metrics table (``docs/generate.py``) are derived. Removing
a field is deleting its declaration (and the line of ``read_stats`` that fills it).
"""

from __future__ import annotations

import dataclasses
import operator
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["DATABASE_COUNTERS", "METRICS", "Metric", "PoolStats", "metric_of"]

Kind = Literal["gauge", "counter", "timer"]
_KEY = "uow.metric"


@dataclass(frozen=True, slots=True)
class Metric:
    """What one :class:`PoolStats` field measures, declared once.

    ``PoolStats``' docstring, ``uow.prometheus``'s metric names and help texts, the
    database's own counters and the reference's metrics table (``docs/generate.py``)
    are all read from these declarations.
    """

    kind: Kind
    """``gauge`` (a value now), ``counter`` (only grows) or ``timer`` (milliseconds, summed)."""
    unit: str
    """What it counts (connections, requests...); ``ms`` for timers."""
    doc: str
    """What it measures, one sentence (Markdown)."""
    hikari: str = ""
    """HikariCP's name for the same measure, if it has one."""
    prometheus: str = ""
    """Its name in ``uow.prometheus`` (a counter's ``_total`` suffix left out), if exported;
    ``name{label="value"}`` for one of several series of a family."""
    counted_by_database: bool = False
    """An event the database counts (``Database.counters()``), not the pool's recorder."""


def measures(
    kind: Kind,
    unit: str,
    doc: str,
    *,
    hikari: str = "",
    prometheus: str = "",
    counted_by_database: bool = False,
) -> dict[str, Metric]:
    """The metadata of a :class:`PoolStats` field: ``field(metadata=measures(...))``."""
    return {_KEY: Metric(kind, unit, doc, hikari, prometheus, counted_by_database)}


def metric_of(stats_field: dataclasses.Field[Any]) -> Metric:
    """The declaration of one :class:`PoolStats` field."""
    declared = stats_field.metadata[_KEY]
    assert isinstance(declared, Metric)
    return declared


@dataclass(frozen=True, slots=True)
class PoolStats:
    """A snapshot of a database's pool: gauges, timers and counters since it was created.

    Names follow psycopg_pool's ``get_stats()`` keys where one exists; HikariCP's
    equivalent is given for each. Durations are milliseconds (floats, unlike
    psycopg_pool's integers, so short transactions still add up). Counters only grow.
    When the database has built its asyncio engine too, its pool is added in: both
    are connections this process holds to the same server.
    """

    pool_min: int = field(
        metadata=measures(
            "gauge",
            "connections",
            "Connections the pool keeps open once opened (`pool_size`).",
            hikari="minimumIdle",
            prometheus="uow_pool_min",
        )
    )
    pool_max: int = field(
        metadata=measures(
            "gauge",
            "connections",
            "Most connections it may open (`pool_size + max_overflow`, -1 for no limit).",
            hikari="maximumPoolSize",
            prometheus="uow_pool_max",
        )
    )
    pool_size: int = field(
        metadata=measures(
            "gauge",
            "connections",
            "Connections open now, in use or idle.",
            hikari="totalConnections",
        )
    )
    pool_available: int = field(
        metadata=measures(
            "gauge",
            "connections",
            "Connections idle in the pool now.",
            hikari="idleConnections",
            prometheus='uow_pool_connections{state="idle"}',
        )
    )
    pool_checked_out: int = field(
        metadata=measures(
            "gauge",
            "connections",
            "Connections in use by a unit of work now.",
            hikari="activeConnections",
            prometheus='uow_pool_connections{state="active"}',
        )
    )
    pool_overflow: int = field(
        metadata=measures(
            "gauge",
            "connections",
            "Connections open now beyond `pool_size` (overflow; closed again when returned).",
        )
    )
    requests_waiting: int = field(
        metadata=measures(
            "gauge",
            "callers",
            "Callers queued for a connection now.",
            hikari="pendingThreads",
            prometheus="uow_pool_waiting",
        )
    )
    requests_num: int = field(
        metadata=measures(
            "counter",
            "requests",
            "Connections requested from the pool.",
            hikari="pool.Wait count",
            prometheus="uow_pool_requests",
        )
    )
    requests_queued: int = field(
        metadata=measures(
            "counter",
            "requests",
            "Requests that had to queue because no connection was free.",
            prometheus="uow_pool_requests_queued",
        )
    )
    requests_wait_ms: float = field(
        metadata=measures(
            "timer",
            "ms",
            "Time callers spent getting a connection: queued, or opening a new one "
            "(psycopg_pool counts only the time queued).",
            hikari="pool.Wait",
            prometheus="uow_pool_wait_seconds",
        )
    )
    requests_errors: int = field(
        metadata=measures(
            "counter",
            "requests",
            "Requests that got no connection: timeouts, or a connection that could not be opened.",
            prometheus="uow_pool_request_errors",
        )
    )
    requests_timeouts: int = field(
        metadata=measures(
            "counter",
            "requests",
            "Requests that timed out as `PoolExhausted` after `pool_timeout`.",
            hikari="pool.ConnectionTimeoutRate",
            prometheus="uow_pool_timeouts",
        )
    )
    usage_ms: float = field(
        metadata=measures(
            "timer",
            "ms",
            "Time connections spent checked out, summed.",
            hikari="pool.Usage",
            prometheus="uow_pool_usage_seconds",
        )
    )
    connections_num: int = field(
        metadata=measures(
            "counter",
            "connections",
            "Connections opened to the server (server backends started).",
            prometheus="uow_pool_connects",
        )
    )
    connections_ms: float = field(
        metadata=measures(
            "timer",
            "ms",
            "Time spent opening connections, failed attempts included.",
            hikari="pool.ConnectionCreation",
            prometheus="uow_pool_connect_seconds",
        )
    )
    connections_errors: int = field(
        metadata=measures(
            "counter",
            "attempts",
            'Failed attempts to open a connection (`Database.counters()["connect_failures"]`).',
            prometheus="uow_pool_connect_errors",
        )
    )
    connections_lost: int = field(
        metadata=measures(
            "counter",
            "connections",
            "Connections found dead at checkout, or that died in use, and were discarded.",
            prometheus="uow_pool_connections_lost",
        )
    )
    invalidations: int = field(
        metadata=measures(
            "counter",
            "connections",
            "Connections invalidated for any reason: lost, recycled, or marked for replacement.",
            prometheus="uow_pool_invalidations",
        )
    )
    retries: int = field(
        metadata=measures(
            "counter",
            "units of work",
            "Units of work run again after a transient error.",
            prometheus="uow_retries",
            counted_by_database=True,
        )
    )
    leaks: int = field(
        metadata=measures(
            "counter",
            "connections",
            "Connections held past `leak_detection_threshold`.",
            prometheus="uow_leaks",
            counted_by_database=True,
        )
    )
    long_transactions: int = field(
        metadata=measures(
            "counter",
            "transactions",
            "Transactions open past `long_transaction_threshold`.",
            prometheus="uow_long_transactions",
            counted_by_database=True,
        )
    )
    fast_failures: int = field(
        metadata=measures(
            "counter",
            "connections",
            "Connections refused without trying, while the server was unreachable.",
            prometheus="uow_fast_failures",
            counted_by_database=True,
        )
    )
    hung_connections: int = field(
        metadata=measures(
            "counter",
            "connections",
            "Connections closed by uow's watchdog: the server had not answered a command past "
            "its statement timeout + 5 s, or a checkout ping past `connect_timeout`.",
            prometheus="uow_hung_connections",
            counted_by_database=True,
        )
    )

    def __add__(self, other: PoolStats) -> PoolStats:
        """Field by field sum: two pools to the same server, seen as one.

        The limits are not summed: a Database's sync and asyncio pools share one
        ``pool_size + max_overflow`` per server (see ``uow._engine.limit``).
        """
        return PoolStats(
            **{
                f.name: (max if f.name in _SHARED else operator.add)(
                    getattr(self, f.name), getattr(other, f.name)
                )
                for f in dataclasses.fields(self)
            }
        )


_SHARED = frozenset({"pool_min", "pool_max"})  # limits both pools share, not added up

METRICS = {f.name: metric_of(f) for f in dataclasses.fields(PoolStats)}
"""Every :class:`PoolStats` field's declaration, in field order."""
DATABASE_COUNTERS = tuple(name for name, m in METRICS.items() if m.counted_by_database)
"""The events a database counts itself (``Database.counters()``' keys)."""


def _attributes_section() -> str:
    lines = ["", "    Attributes:"]
    for name, declared in METRICS.items():
        hikari = f"; HikariCP `{declared.hikari}`" if declared.hikari else ""
        lines.append(f"        {name}: {declared.doc} ({declared.kind}, {declared.unit}{hikari})")
    return "\n".join(lines)


if PoolStats.__doc__:  # None under python -OO
    PoolStats.__doc__ += _attributes_section()
