"""Prometheus metrics of a database's pool: ``pip install 'uow[prometheus]'``.

``uow.prometheus.register(database)`` adds a collector to a ``prometheus_client``
registry (the default one unless ``registry=`` is given). It reads
:meth:`uow.Database.stats` when Prometheus scrapes: no background thread, no round
trip. Every metric is named ``uow_...`` and labelled ``pool`` (``"primary"`` unless
``name=`` says otherwise; a database's read replicas, if any, are ``"<name>-replica-0"``,
``"<name>-replica-1"``...), so several databases can share one registry::

    from prometheus_client import start_http_server
    import uow, uow.prometheus

    uow.prometheus.register(uow.get_database())
    start_http_server(9100)

Gauges: ``uow_pool_connections{state="idle"|"active"}``, ``uow_pool_waiting``,
``uow_pool_min``, ``uow_pool_max``. Counters: ``uow_pool_requests_total``,
``uow_pool_requests_queued_total``, ``uow_pool_request_errors_total``,
``uow_pool_timeouts_total``, ``uow_pool_wait_seconds_total``,
``uow_pool_usage_seconds_total``, ``uow_pool_connects_total``,
``uow_pool_connect_seconds_total``, ``uow_pool_connect_errors_total``,
``uow_pool_connections_lost_total``, ``uow_pool_invalidations_total``,
``uow_retries_total``, ``uow_leaks_total``, ``uow_long_transactions_total``,
``uow_fast_failures_total``. Divide a ``..._seconds_total`` rate by its count's rate
for a mean (``rate(uow_pool_wait_seconds_total[1m]) / rate(uow_pool_requests_total[1m])``).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator

try:
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    raise ImportError(
        "uow.prometheus needs prometheus_client: pip install 'uow[prometheus]'"
    ) from exc

from ._database import Database
from ._engine.metrics import PoolStats

__all__ = ["UowCollector", "register"]

_LABEL = "pool"

# name, help, value; counters get prometheus_client's "_total" suffix.
_GAUGES: list[tuple[str, str, Callable[[PoolStats], float]]] = [
    ("uow_pool_waiting", "Callers queued for a connection now.", lambda s: s.requests_waiting),
    ("uow_pool_min", "Connections the pool keeps open (pool_size).", lambda s: s.pool_min),
    ("uow_pool_max", "Most connections the pool may open.", lambda s: s.pool_max),
]
_COUNTERS: list[tuple[str, str, Callable[[PoolStats], float]]] = [
    ("uow_pool_requests", "Connections requested from the pool.", lambda s: s.requests_num),
    (
        "uow_pool_requests_queued",
        "Requests that queued because no connection was free.",
        lambda s: s.requests_queued,
    ),
    (
        "uow_pool_request_errors",
        "Requests that got no connection (timeouts, connect failures).",
        lambda s: s.requests_errors,
    ),
    (
        "uow_pool_timeouts",
        "Requests that timed out with PoolExhausted after pool_timeout.",
        lambda s: s.requests_timeouts,
    ),
    (
        "uow_pool_wait_seconds",
        "Time callers spent getting a connection (queued, or opening one).",
        lambda s: s.requests_wait_ms / 1000,
    ),
    (
        "uow_pool_usage_seconds",
        "Time connections spent checked out.",
        lambda s: s.usage_ms / 1000,
    ),
    ("uow_pool_connects", "Connections opened to the server.", lambda s: s.connections_num),
    (
        "uow_pool_connect_seconds",
        "Time spent opening connections, failed attempts included.",
        lambda s: s.connections_ms / 1000,
    ),
    (
        "uow_pool_connect_errors",
        "Failed attempts to open a connection.",
        lambda s: s.connections_errors,
    ),
    (
        "uow_pool_connections_lost",
        "Connections found dead at checkout or that died in use.",
        lambda s: s.connections_lost,
    ),
    (
        "uow_pool_invalidations",
        "Connections invalidated for any reason (lost, recycled, replaced).",
        lambda s: s.invalidations,
    ),
    ("uow_retries", "Units of work run again after a transient error.", lambda s: s.retries),
    ("uow_leaks", "Connections held past leak_detection_threshold.", lambda s: s.leaks),
    (
        "uow_long_transactions",
        "Transactions open past long_transaction_threshold.",
        lambda s: s.long_transactions,
    ),
    (
        "uow_fast_failures",
        "Connections refused without trying while the server was unreachable.",
        lambda s: s.fast_failures,
    ),
]


class UowCollector:
    """A Prometheus collector for one or more databases, read at scrape time. Thread-safe."""

    def __init__(self) -> None:
        """Create a collector with no database; :meth:`add` them."""
        self._lock = threading.Lock()
        self._databases: dict[str, Database] = {}

    def add(self, database: Database, name: str = "primary") -> None:
        """Export ``database``'s metrics with the label ``pool=name``.

        Raises:
            ValueError: another database is already exported under ``name``.
        """
        with self._lock:
            if self._databases.get(name, database) is not database:
                raise ValueError(
                    f"a database is already exported as pool={name!r}; give this one "
                    "another name=, such as 'reporting'"
                )
            self._databases[name] = database

    def describe(self) -> Iterator[Metric]:
        """The metric families without samples, for the registry's duplicate check."""
        return self._families({})

    def collect(self) -> Iterator[Metric]:
        """The metric families with one sample per database, from ``stats()`` now."""
        with self._lock:
            databases = dict(self._databases)
        stats: dict[str, PoolStats] = {}
        for name, database in databases.items():
            stats[name] = database.stats()
            # Read replicas' pools get labels of their own: "<name>-replica-<i>".
            for i, replica in enumerate(database.replica_stats()):
                stats[f"{name}-replica-{i}"] = replica
        return self._families(stats)

    def _families(self, stats: dict[str, PoolStats]) -> Iterator[Metric]:
        connections = GaugeMetricFamily(
            "uow_pool_connections",
            "Open connections, idle in the pool or active (checked out).",
            labels=[_LABEL, "state"],
        )
        for name, s in stats.items():
            connections.add_metric([name, "idle"], s.pool_available)
            connections.add_metric([name, "active"], s.pool_checked_out)
        yield connections
        for family, table in ((GaugeMetricFamily, _GAUGES), (CounterMetricFamily, _COUNTERS)):
            for metric_name, documentation, value in table:
                metric = family(metric_name, documentation, labels=[_LABEL])
                for name, s in stats.items():
                    metric.add_metric([name], value(s))
                yield metric


_collectors: weakref.WeakKeyDictionary[CollectorRegistry, UowCollector] = (
    weakref.WeakKeyDictionary()
)
_collectors_lock = threading.Lock()


def register(
    database: Database, registry: CollectorRegistry | None = None, *, name: str = "primary"
) -> UowCollector:
    """Export ``database``'s pool metrics to ``registry``, labelled ``pool=name``.

    One collector serves every database registered on the same registry.

    Args:
        database: the database whose ``stats()`` are exported.
        registry: where to register; ``prometheus_client.REGISTRY`` by default.
        name: the ``pool`` label; each database on a registry needs its own.

    Returns:
        The registry's collector.

    Raises:
        ValueError: ``name`` is already taken by another database on this registry.
    """
    target = REGISTRY if registry is None else registry
    with _collectors_lock:
        collector = _collectors.get(target)
        if collector is None:
            collector = _collectors[target] = UowCollector()
            target.register(collector)
    collector.add(database, name)
    return collector
