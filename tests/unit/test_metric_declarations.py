"""PoolStats' declarations drive uow.prometheus and the database's counters."""

from __future__ import annotations

import dataclasses

from uow import Database, PoolStats, Settings
from uow._engine.stats import DATABASE_COUNTERS, METRICS
from uow.prometheus import UowCollector


def test_every_field_is_declared() -> None:
    """Each PoolStats field carries a Metric; timers are the fields in milliseconds."""
    names = [f.name for f in dataclasses.fields(PoolStats)]
    assert list(METRICS) == names
    assert {n for n, m in METRICS.items() if m.kind == "timer"} == {
        n for n in names if n.endswith("_ms")
    }


def test_prometheus_families_and_help_come_from_the_declarations() -> None:
    """uow.prometheus exports each declared name, with the declared meaning as its help."""
    families = {family.name: family for family in UowCollector().describe()}
    for declared in METRICS.values():
        if not declared.prometheus:
            continue
        name = declared.prometheus.partition("{")[0]
        family = families[name]
        assert family.type == ("gauge" if declared.kind == "gauge" else "counter")
        if "{" not in declared.prometheus:
            assert family.documentation == declared.doc.replace("`", "")


def test_database_counters_are_the_declared_ones() -> None:
    """Database.counters() is the declared database counts plus connect_failures, derived."""
    database = Database(Settings(url="postgresql://h/db"))
    assert set(DATABASE_COUNTERS) == {
        "retries",
        "leaks",
        "long_transactions",
        "fast_failures",
        "hung_connections",
    }
    assert set(database.counters()) == {*DATABASE_COUNTERS, "connect_failures"}
    assert "connect_failures" not in METRICS  # one number, one field: connections_errors
