"""uow.prometheus: the pool's metrics in Prometheus' text format, read at scrape time."""

from __future__ import annotations

import subprocess
import sys

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

import uow.prometheus
from tests.conftest import MakeDatabase
from uow import UnitOfWork

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(registry: CollectorRegistry) -> Samples:
    """Every sample of the registry, keyed by name and sorted labels."""
    exposition = generate_latest(registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }


def test_scrape_reads_stats_at_scrape_time(make_database: MakeDatabase) -> None:
    """Counters and gauges follow db.stats() between two scrapes."""
    database = make_database(pool_size=3)
    registry = CollectorRegistry()
    uow.prometheus.register(database, registry)
    before = scrape(registry)
    pool = (("pool", "primary"),)
    assert before[("uow_pool_requests_total", pool)] == 0
    assert before[("uow_pool_max", pool)] == 3
    for _ in range(4):
        with UnitOfWork(database) as unit:
            unit.session.execute(text("SELECT 1"))
    after = scrape(registry)
    assert after[("uow_pool_requests_total", pool)] == 4
    assert after[("uow_pool_connects_total", pool)] == 1
    assert after[("uow_pool_usage_seconds_total", pool)] > 0
    assert after[("uow_pool_connections", (("pool", "primary"), ("state", "idle")))] == 1
    assert after[("uow_pool_connections", (("pool", "primary"), ("state", "active")))] == 0
    assert after[("uow_pool_timeouts_total", pool)] == 0
    assert after[("uow_retries_total", pool)] == 0
    assert all(name.startswith("uow_") for name, _ in after)


def test_several_databases_share_a_registry(make_database: MakeDatabase) -> None:
    """Two databases on one registry get their own pool label; a taken name is refused."""
    first, second = make_database(pool_size=2), make_database(pool_size=4)
    registry = CollectorRegistry()
    collector = uow.prometheus.register(first, registry)
    assert uow.prometheus.register(second, registry, name="reporting") is collector
    samples = scrape(registry)
    assert samples[("uow_pool_max", (("pool", "primary"),))] == 2
    assert samples[("uow_pool_max", (("pool", "reporting"),))] == 4
    with pytest.raises(ValueError, match="pool='primary'"):
        uow.prometheus.register(second, registry)
    uow.prometheus.register(first, registry)  # the same database again changes nothing


def test_missing_prometheus_client_names_the_extra() -> None:
    """Without prometheus_client, importing uow.prometheus says which extra to install."""
    code = (
        "import sys; sys.modules['prometheus_client'] = None\n"
        "try:\n    import uow.prometheus\nexcept ImportError as exc:\n    print(exc)"
    )
    done = subprocess.run(  # noqa: S603 - our own interpreter and code
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert "pip install 'uow[prometheus]'" in done.stdout, done.stderr
