"""A replica that cannot be reached is skipped, then the primary serves; it is used again later."""

from __future__ import annotations

import asyncio
import logging
import re
import time

import psycopg
import pytest
from sqlalchemy import text

from tests.helpers import wait_for
from tests.replicas.conftest import PASSWORD, TABLE, Cluster, MakeDatabase
from uow import AsyncUnitOfWork, ConfigurationError, Database, UnitOfWork

WHERE = text("SELECT pg_is_in_recovery(), inet_server_port()")


def where(database: Database, **unit: bool) -> tuple[bool, int]:
    """(in recovery, port) of the server a unit of work with these arguments runs on."""
    with UnitOfWork(database, **unit) as uow:
        recovery, port = uow.session.execute(WHERE).one()
    return recovery, port


def with_password(url: str) -> str:
    """The URL, which carries the cluster's known password, to check it never shows."""
    assert f"postgres:{PASSWORD}@" in url
    return url


def replica_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The messages of the warnings uow logged about read replicas."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "uow" and r.levelno == logging.WARNING and "read replica" in r.getMessage()
    ]


def test_a_stopped_replica_falls_back_to_the_primary_and_comes_back(
    cluster: Cluster, make_db: MakeDatabase, caplog: pytest.LogCaptureFixture
) -> None:
    """Replica down: readonly units run on the primary, one warning; up again: back to it."""
    replica = cluster.replicas[0]
    db = make_db(replica_urls=[with_password(replica.url)])
    assert where(db, readonly=True) == (True, replica.port)  # leaves a pooled connection
    caplog.set_level(logging.INFO, logger="uow")
    replica.stop()
    started = time.monotonic()
    for _ in range(20):
        assert where(db, readonly=True) == (False, cluster.primary.port)
    per_unit = (time.monotonic() - started) / 20
    warnings = replica_warnings(caplog)
    assert len(warnings) == 1, warnings
    assert f"127.0.0.1:{replica.port}" in warnings[0] and "***" in warnings[0]
    assert PASSWORD not in caplog.text
    assert per_unit < 0.5, f"falling back took {per_unit:.3f} s a unit"

    replica.start()
    restarted = time.monotonic()
    wait_for(lambda: where(db, readonly=True)[0], timeout=5.0, what="reads back on the replica")
    # The outage gate's backoff is capped at 1 s: the replica is tried again within it.
    assert time.monotonic() - restarted < 2.0
    assert len(replica_warnings(caplog)) == 1
    assert any("answers again" in r.getMessage() for r in caplog.records)


def test_one_replica_down_leaves_the_other_serving(cluster: Cluster, make_db: MakeDatabase) -> None:
    """With one of two replicas stopped, every readonly unit runs on the other one."""
    down, up = cluster.replicas
    db = make_db()
    down.stop()
    assert {where(db, readonly=True) for _ in range(6)} == {(True, up.port)}


def test_writes_still_go_to_the_primary_while_replicas_are_down(
    cluster: Cluster, db: Database
) -> None:
    """With every replica stopped, readonly and writing units both succeed on the primary."""
    for replica in cluster.replicas:
        replica.stop()
    assert where(db, readonly=True) == (False, cluster.primary.port)
    with UnitOfWork(db) as uow:
        uow.session.execute(text(f"INSERT INTO {TABLE} (name) VALUES ('still')"))
    with UnitOfWork(db, readonly=True) as uow:
        assert uow.session.execute(text(f"SELECT name FROM {TABLE}")).scalars().all() == ["still"]


def test_async_readonly_units_route_and_fall_back_the_same_way(
    cluster: Cluster, make_db: MakeDatabase, caplog: pytest.LogCaptureFixture
) -> None:
    """AsyncUnitOfWork(readonly=True) runs on the replica, on the primary once it stops,
    and right after a write in the same task on the primary."""
    replica = cluster.replicas[0]
    db = make_db(replica_urls=[with_password(replica.url)], replica_read_after_write=0.5)

    async def where_async(**unit: bool) -> tuple[bool, int]:
        async with AsyncUnitOfWork(db, **unit) as uow:
            recovery, port = (await uow.session.execute(WHERE)).one()
        return recovery, port

    async def scenario() -> list[tuple[bool, int]]:
        seen = [await where_async(readonly=True)]
        async with AsyncUnitOfWork(db) as uow:
            await uow.session.execute(text(f"INSERT INTO {TABLE} (name) VALUES ('a')"))
        seen.append(await where_async(readonly=True))  # read-your-writes: the primary
        await asyncio.sleep(0.5)
        seen.append(await where_async(readonly=True))
        replica.stop()
        seen.append(await where_async(readonly=True))
        assert db._replicas is not None
        assert [e.pool.checkedout() for e in db._replicas.async_engines] == [0]
        await db.dispose_async()
        return seen

    caplog.set_level(logging.WARNING, logger="uow")
    primary, standby = (False, cluster.primary.port), (True, replica.port)
    assert asyncio.run(scenario()) == [standby, primary, standby, primary]
    assert len(replica_warnings(caplog)) == 1
    assert PASSWORD not in caplog.text


def test_a_replica_over_replica_max_lag_is_skipped_until_it_catches_up(
    cluster: Cluster, make_db: MakeDatabase, caplog: pytest.LogCaptureFixture
) -> None:
    """With replica_max_lag, a replica whose replay is paused behind a write is skipped."""
    behind, current = cluster.replicas
    db = make_db(replica_max_lag=0.2)
    cluster.pause_replay(behind)
    cluster.execute(cluster.primary, f"INSERT INTO {TABLE} (name) VALUES ('later')")
    time.sleep(0.3)
    caplog.set_level(logging.WARNING, logger="uow")
    assert {where(db, readonly=True) for _ in range(6)} == {(True, current.port)}
    lagging = [r.getMessage() for r in caplog.records if "lags" in r.getMessage()]
    assert len(lagging) == 1 and f":{behind.port}/" in lagging[0]

    cluster.execute(behind, "SELECT pg_wal_replay_resume()")
    cluster.caught_up()
    # The next lag check, within a second, finds it caught up.
    wait_for(lambda: where(db, readonly=True)[1] == behind.port, timeout=3.0, what="back")


def test_every_replica_lagging_sends_readonly_units_to_the_primary(
    cluster: Cluster, make_db: MakeDatabase
) -> None:
    """With every replica over replica_max_lag, readonly units read from the primary."""
    db = make_db(replica_max_lag=0.2)
    for replica in cluster.replicas:
        cluster.execute(replica, "SELECT pg_wal_replay_pause()")
    cluster.execute(cluster.primary, f"INSERT INTO {TABLE} (name) VALUES ('later')")
    time.sleep(0.3)
    for _ in range(4):
        with UnitOfWork(db, readonly=True) as uow:
            assert uow.session.execute(WHERE).one() == (False, cluster.primary.port)
            names = uow.session.execute(text(f"SELECT name FROM {TABLE}")).scalars().all()
            assert names == ["later"]


def test_the_budget_is_checked_against_each_replica_on_its_first_connection(
    cluster: Cluster, make_db: MakeDatabase
) -> None:
    """A replica without room for the pool fails loudly; the primary's budget is its own."""
    replica = cluster.replicas[0]
    # max_connections=30, 3 reserved for superusers: 23 other connections leave 4 free.
    hogs = [psycopg.connect(replica.dsn, application_name="hog") for _ in range(23)]
    try:
        db = make_db(replica_urls=[replica.url])
        masked = f"postgresql+psycopg://postgres:***@127.0.0.1:{replica.port}/"
        exceeded = f"connection budget exceeded on {re.escape(masked)}"
        with pytest.raises(ConfigurationError, match=exceeded), UnitOfWork(db, readonly=True):
            pass
        assert where(db) == (False, cluster.primary.port)
        with pytest.raises(ConfigurationError, match=exceeded):
            db.check()  # on demand too: every replica, not only the primary
    finally:
        for hog in hogs:
            hog.close()


def test_check_works_on_a_replica_connection_that_served_a_readonly_unit(
    cluster: Cluster, db: Database
) -> None:
    """db.check() after readonly units reuses the replicas' pooled connections without error."""
    for _ in range(len(cluster.replicas)):
        where(db, readonly=True)  # every replica pool now holds a connection reset after READ ONLY
    budget = db.check()
    assert budget.max_connections > 0
