"""Fixtures of the read-replica tests: a throwaway primary with two streaming hot standbys.

The three servers are started once for the directory (cloning a standby takes about a
third of a second). Tests may stop a standby or pause its replay: the ``cluster``
fixture starts it again and resumes replay before each test. Nothing is skipped: a
server that cannot start fails the tests.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
import pytest

from tests.conftest import database_factory
from tests.helpers import wait_for
from uow import Database
from uow.testing import EmbeddedPostgres

T = TypeVar("T")

MAX_CONNECTIONS = 30
TABLE = "replica_items"
PASSWORD = "s3cret-pw"  # the cluster's superuser password: tests check it never shows


@dataclass
class Cluster:
    """A primary and its standbys, all EmbeddedPostgres."""

    primary: EmbeddedPostgres
    replicas: list[EmbeddedPostgres]

    def execute(self, server: EmbeddedPostgres, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """Run one statement on ``server`` outside any pool (autocommit) and return its rows."""
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            cursor = conn.execute(sql, args or None)
            return cursor.fetchall() if cursor.description else []

    def replayed(self, replica: EmbeddedPostgres) -> bool:
        """Whether ``replica`` has replayed everything the primary has written so far."""
        (lsn,) = self.execute(self.primary, "SELECT pg_current_wal_lsn()::text")[0]
        rows = self.execute(
            replica, "SELECT pg_wal_lsn_diff(%s::pg_lsn, pg_last_wal_replay_lsn()) <= 0", lsn
        )
        return bool(rows[0][0])

    def pause_replay(self, replica: EmbeddedPostgres) -> None:
        """Pause ``replica``'s replay, and wait until it has paused (the fixture resumes it)."""
        self.execute(replica, "SELECT pg_wal_replay_pause()")
        wait_for(
            lambda: (
                self.execute(replica, "SELECT pg_get_wal_replay_pause_state()")[0][0] == "paused"
            ),
            what="replay to pause",
        )

    def caught_up(self) -> None:
        """Wait until every standby has replayed the primary's writes so far."""
        for replica in self.replicas:
            wait_for(lambda r=replica: self.replayed(r), what=f"{replica!r} caught up")


@pytest.fixture(scope="session")
def servers() -> Iterator[Cluster]:
    """The primary, with a small table, and two standbys that have replayed it."""
    # A known password, so that the tests can check it never shows.
    primary = EmbeddedPostgres(max_connections=MAX_CONNECTIONS, password=PASSWORD).start()
    made = [primary]
    try:
        cluster = Cluster(primary, [])
        cluster.execute(primary, f"CREATE TABLE {TABLE} (id serial PRIMARY KEY, name text)")
        for i in range(2):
            # cluster_name is the standby's application_name in pg_stat_replication.
            made.append(primary.replica(settings={"cluster_name": f"replica{i}"}))
            cluster.replicas.append(made[-1])
        cluster.caught_up()
        yield cluster
    finally:
        for server in reversed(made):
            server.cleanup()


@pytest.fixture
def cluster(servers: Cluster) -> Cluster:
    """The cluster with every standby running, replaying, and caught up; the table empty."""
    for replica in servers.replicas:
        replica.start()  # a no-op unless an earlier test stopped it
        if servers.execute(replica, "SELECT pg_is_wal_replay_paused()")[0][0]:
            servers.execute(replica, "SELECT pg_wal_replay_resume()")
    servers.execute(servers.primary, f"TRUNCATE {TABLE} RESTART IDENTITY")
    servers.caught_up()
    return servers


MakeDatabase = Callable[..., Database]


@pytest.fixture
def app_name() -> str:
    """A unique application_name for the test's connections."""
    return f"uow-replica-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def make_db(cluster: Cluster, app_name: str) -> Iterator[MakeDatabase]:
    """Build Databases on the primary with both standbys as replicas (unless told otherwise).

    Each must end with no connection checked out, on the primary or any replica.
    """
    with database_factory(
        url=cluster.primary.url,
        replica_urls=[r.url for r in cluster.replicas],
        application_name=app_name,
    ) as make:
        yield make


@pytest.fixture
def db(make_db: MakeDatabase) -> Database:
    """A Database on the primary with both standbys as replicas."""
    return make_db()


__all__ = ["TABLE", "Cluster", "MakeDatabase"]
