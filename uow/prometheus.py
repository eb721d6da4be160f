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

Each exported :class:`~uow.PoolStats` field declares its metric's name (see
``uow._engine.stats``); the reference's metrics table (``docs/reference/metrics.md``)
lists them with their kinds and meanings, and the help texts are those meanings.
Timers are exported in seconds, as counters. Divide a ``..._seconds_total`` rate by its
count's rate for a mean
(``rate(uow_pool_wait_seconds_total[1m]) / rate(uow_pool_requests_total[1m])``).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass

try:
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
except ImportError as exc:  # pragma: no cover - exercised without the extra installed
    raise ImportError(
        "uow.prometheus needs prometheus_client: pip install 'uow[prometheus]'"
    ) from exc

from ._database import Database
from ._engine.metrics import PoolStats
from ._engine.stats import METRICS

__all__ = ["UowCollector", "register"]

_LABEL = "pool"
# The help of a family whose series are several PoolStats fields (uow_pool_connections).
_FAMILY_HELP = {
    "uow_pool_connections": "Open connections, idle in the pool or active (checked out)."
}


@dataclass(frozen=True, slots=True)
class _Series:
    field: str
    labels: tuple[tuple[str, str], ...]
    scale: float  # timers are milliseconds in PoolStats, seconds in Prometheus


def _families_declared() -> dict[str, tuple[bool, str, list[_Series]]]:
    """Each exported family (name: counter?, help, series), from PoolStats' declarations."""
    families: dict[str, tuple[bool, str, list[_Series]]] = {}
    for field_name, declared in METRICS.items():
        if not declared.prometheus:
            continue
        # 'name{key="value"}': one series of a family; at most one label is declared.
        name, _, label = declared.prometheus.rstrip("}").partition("{")
        key, _, value = label.partition("=")
        labels = ((key, value.strip('"')),) if label else ()
        help_text = _FAMILY_HELP.get(name, declared.doc.replace("`", ""))
        counter = declared.kind != "gauge"
        scale = 0.001 if declared.kind == "timer" else 1.0
        families.setdefault(name, (counter, help_text, []))[2].append(
            _Series(field_name, labels, scale)
        )
    return families


_FAMILIES = _families_declared()


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
        for metric_name, (counter, documentation, series) in _FAMILIES.items():
            family = CounterMetricFamily if counter else GaugeMetricFamily
            label_names = [_LABEL, *(key for key, _ in series[0].labels)]
            metric = family(metric_name, documentation, labels=label_names)
            for name, s in stats.items():
                for one in series:
                    labels = [name, *(label for _, label in one.labels)]
                    metric.add_metric(labels, getattr(s, one.field) * one.scale)
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
