"""Each read replica's pool has its own statistics, exported with a label of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

import uow.prometheus
from tests.replicas.conftest import Cluster
from tests.replicas.test_routing import WHERE
from uow import Database, UnitOfWork


def test_replica_stats_count_the_units_routed_to_each(cluster: Cluster, db: Database) -> None:
    """Four readonly units on two replicas: two requests each, none on the primary's pool."""
    for _ in range(4):
        with UnitOfWork(db, readonly=True) as unit:
            assert unit.session.execute(WHERE).one()[0] is True  # in recovery: a replica
    first, second = db.replica_stats()
    assert (first.requests_num, second.requests_num) == (2, 2)
    assert first.connections_num == second.connections_num == 1
    assert db.stats().requests_num == 0


def test_prometheus_labels_each_replica(cluster: Cluster, db: Database) -> None:
    """The exporter shows pool="primary", "primary-replica-0" and "primary-replica-1"."""
    registry = CollectorRegistry()
    uow.prometheus.register(db, registry)
    for _ in range(2):
        with UnitOfWork(db, readonly=True) as unit:
            unit.session.execute(WHERE)
    text = generate_latest(registry).decode()
    assert 'uow_pool_requests_total{pool="primary"} 0.0' in text
    assert 'uow_pool_requests_total{pool="primary-replica-0"} 1.0' in text
    assert 'uow_pool_requests_total{pool="primary-replica-1"} 1.0' in text
