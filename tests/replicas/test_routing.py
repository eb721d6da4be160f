"""Readonly units of work read from the replicas in turn; everything else goes to the primary."""

from __future__ import annotations

import itertools
import os
import signal
import threading
import time

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from tests.helpers import wait_for
from tests.protocol_trace import Trace
from tests.replicas.conftest import TABLE, Cluster, MakeDatabase
from uow import Database, UnitOfWork, run_transaction
from uow.testing import EmbeddedPostgres, rolled_back

WHERE = text("SELECT pg_is_in_recovery(), inet_server_port()")


def where(database: Database, **unit: bool) -> tuple[bool, int]:
    """(in recovery, port) of the server a unit of work with these arguments runs on."""
    with UnitOfWork(database, **unit) as uow:
        recovery, port = uow.session.execute(WHERE).one()
    return recovery, port


def test_readonly_units_run_on_a_replica_and_writes_on_the_primary(
    cluster: Cluster, db: Database
) -> None:
    """readonly=True lands on a standby; a unit that may write lands on the primary."""
    replica_ports = {r.port for r in cluster.replicas}
    recovery, port = where(db, readonly=True)
    assert recovery is True and port in replica_ports
    assert where(db) == (False, cluster.primary.port)
    with UnitOfWork(db) as uow:
        uow.session.execute(text(f"INSERT INTO {TABLE} (name) VALUES ('written')"))
        assert uow.session.execute(WHERE).one() == (False, cluster.primary.port)


def test_replicas_are_taken_in_turn(cluster: Cluster, db: Database) -> None:
    """Consecutive readonly units alternate between the two standbys (round robin)."""
    ports = [where(db, readonly=True)[1] for _ in range(6)]
    assert set(ports) == {r.port for r in cluster.replicas}
    assert all(a != b for a, b in itertools.pairwise(ports)), ports


def test_replica_false_reads_from_the_primary(cluster: Cluster, db: Database) -> None:
    """UnitOfWork(readonly=True, replica=False) runs a READ ONLY transaction on the primary."""
    assert where(db, readonly=True, replica=False) == (False, cluster.primary.port)
    with UnitOfWork(db, readonly=True, replica=False) as uow:
        assert uow.session.execute(text("SHOW transaction_read_only")).scalar() == "on"


def test_a_joined_readonly_unit_shares_the_primary_transaction(
    cluster: Cluster, db: Database
) -> None:
    """A readonly unit nested in a writing one joins it on the primary and sees its writes."""
    with UnitOfWork(db) as outer:
        outer.session.execute(text(f"INSERT INTO {TABLE} (name) VALUES ('mine')"))
        with UnitOfWork(db, readonly=True) as inner:
            assert inner.session.execute(WHERE).one() == (False, cluster.primary.port)
            assert inner.session.execute(text(f"SELECT name FROM {TABLE}")).scalars().all() == [
                "mine"
            ]


def test_a_write_reaches_the_replicas(cluster: Cluster, make_db: MakeDatabase) -> None:
    """A row committed on the primary shows up in readonly units on each replica, soon."""
    db = make_db(replica_read_after_write=0)
    with UnitOfWork(db) as uow:
        uow.session.execute(text(f"INSERT INTO {TABLE} (name) VALUES ('shipped')"))

    def seen_on_both() -> bool:
        seen = set()
        for _ in cluster.replicas:
            with UnitOfWork(db, readonly=True) as uow:
                names = uow.session.execute(text(f"SELECT name FROM {TABLE}")).scalars().all()
                if names == ["shipped"]:
                    seen.add(uow.session.execute(WHERE).one()[1])
        return seen == {r.port for r in cluster.replicas}

    wait_for(seen_on_both, what="the row on both replicas")


def test_reads_right_after_a_write_go_to_the_primary(
    cluster: Cluster, make_db: MakeDatabase
) -> None:
    """After a write commits, this thread's readonly units use the primary for the window."""
    for replica in cluster.replicas:  # make the replicas surely stale
        cluster.execute(replica, "SELECT pg_wal_replay_pause()")
    db = make_db(replica_read_after_write=0.5)
    with UnitOfWork(db) as uow:
        uow.session.execute(text(f"INSERT INTO {TABLE} (name) VALUES ('fresh')"))
    written = time.monotonic()
    with UnitOfWork(db, readonly=True) as uow:
        assert uow.session.execute(WHERE).one() == (False, cluster.primary.port)
        assert uow.session.execute(text(f"SELECT name FROM {TABLE}")).scalars().all() == ["fresh"]
    assert time.monotonic() - written < 0.5, "too slow to test the window"

    # Another thread did not write: it reads from a (stale) replica.
    elsewhere: list[tuple[bool, int]] = []
    thread = threading.Thread(target=lambda: elsewhere.append(where(db, readonly=True)))
    thread.start()
    thread.join()
    assert elsewhere[0][0] is True

    time.sleep(max(0.0, written + 0.5 - time.monotonic()))
    assert where(db, readonly=True)[0] is True  # the window has passed


def test_read_after_write_zero_reads_from_replicas_at_once(
    cluster: Cluster, make_db: MakeDatabase
) -> None:
    """With replica_read_after_write=0 a readonly unit right after a write uses a replica."""
    db = make_db(replica_read_after_write=0)
    with UnitOfWork(db) as uow:
        uow.session.execute(text(f"INSERT INTO {TABLE} (name) VALUES ('x')"))
    assert where(db, readonly=True)[0] is True


def test_writing_in_a_readonly_unit_fails_clearly(db: Database) -> None:
    """A write in a readonly unit on a replica fails with PostgreSQL's read-only error."""
    with pytest.raises(DBAPIError) as caught, UnitOfWork(db, readonly=True) as uow:
        uow.session.execute(text(f"INSERT INTO {TABLE} (name) VALUES ('nope')"))
    assert isinstance(caught.value.orig, psycopg.errors.ReadOnlySqlTransaction)
    assert "read-only transaction" in str(caught.value)


def test_status_and_repr_cover_the_replicas(cluster: Cluster, make_db: MakeDatabase) -> None:
    """db.status() lists each replica's pool; repr shows how many, and no password."""
    urls = [r.url for r in cluster.replicas]  # with the cluster's password, s3cret-pw
    db = make_db(replica_urls=urls)
    assert [r.checked_out for r in db.status().replicas] == [0, 0]
    with UnitOfWork(db, readonly=True):
        assert sum(r.checked_out for r in db.status().replicas) == 1
        assert db.status().checked_out == 0
    assert [r.checked_out for r in db.status().replicas] == [0, 0]
    assert "replicas=2" in repr(db)
    assert "s3cret-pw" not in repr(db) + repr(db.settings)


def test_dispose_closes_the_replica_connections(
    cluster: Cluster, db: Database, app_name: str
) -> None:
    """db.dispose() closes the idle connections of the replicas' pools too."""
    for _ in cluster.replicas:
        where(db, readonly=True)

    def connections(replica: EmbeddedPostgres) -> int:
        rows = cluster.execute(
            replica,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
            app_name,
        )
        return int(rows[0][0])

    assert [connections(r) for r in cluster.replicas] == [1, 1]
    db.dispose()
    wait_for(lambda: [connections(r) for r in cluster.replicas] == [0, 0], what="closed")


def test_a_routed_readonly_unit_costs_no_extra_round_trip(make_db: MakeDatabase) -> None:
    """On a replica, as on the primary: BEGIN READ ONLY with the statement, then ROLLBACK."""
    db = make_db(pool_size=1)
    assert db._replicas is not None
    traces = [Trace(engine) for engine in db._replicas.engines]
    try:
        for _ in range(2):  # the first pass opens the connections; count the second
            for trace in traces:
                trace.take()
            for _ in traces:
                with UnitOfWork(db, readonly=True) as uow:
                    uow.session.execute(text("SELECT 1"))
        expected = (3, ["BEGIN READ ONLY", "SELECT 1", "ROLLBACK"])
        assert [trace.take() for trace in traces] == [expected, expected]
        for _ in traces:
            with UnitOfWork(db, readonly=True):
                pass  # routed, so a connection is checked out, but nothing is sent
        assert [trace.take() for trace in traces] == [(0, []), (0, [])]
    finally:
        for trace in traces:
            trace.close()


def test_a_forked_child_opens_its_own_replica_connections(
    cluster: Cluster, make_db: MakeDatabase
) -> None:
    """After fork() the child reads from the replica on a new connection; the parent keeps its."""
    replica = cluster.replicas[0]
    db = make_db(replica_urls=[replica.url])
    backend = text("SELECT pg_backend_pid(), pg_is_in_recovery()")

    def on_replica() -> int:
        with UnitOfWork(db, readonly=True) as uow:
            pid, recovery = uow.session.execute(backend).one()
        assert recovery is True
        return int(pid)

    parent_backend = on_replica()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 2
        try:
            code = 0 if on_replica() != parent_backend else 1
        finally:
            os._exit(code)
    statuses: list[int] = []

    def exited() -> bool:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            statuses.append(status)
        return bool(done)

    try:
        wait_for(exited, what="the child to exit")
    finally:
        if not statuses:  # fail, but leave no process behind
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(statuses[0]) == 0, "the child failed"
    assert on_replica() == parent_backend


def test_run_transaction_passes_replica_on(cluster: Cluster, db: Database) -> None:
    """run_transaction(readonly=True) reads from a replica, and with replica=False the primary."""

    def port(uow: UnitOfWork) -> int:
        return int(uow.session.execute(text("SELECT inet_server_port()")).scalar_one())

    assert run_transaction(port, database=db, readonly=True) in {r.port for r in cluster.replicas}
    assert run_transaction(port, database=db, readonly=True, replica=False) == cluster.primary.port


def test_the_lag_check_costs_one_statement_a_second_per_replica(
    cluster: Cluster, make_db: MakeDatabase
) -> None:
    """With replica_max_lag, the first unit on a replica reads the lag; the next ones do not."""
    db = make_db(pool_size=1, replica_urls=[cluster.replicas[0].url], replica_max_lag=30)
    assert db._replicas is not None
    trace = Trace(db._replicas.engines[0])
    try:
        for _ in range(3):
            with UnitOfWork(db, readonly=True) as uow:
                uow.session.execute(text("SELECT 1"))
        _, queries = trace.take()
        assert queries[0] == "BEGIN READ ONLY"
        assert queries[1].startswith("SELECT CASE WHEN pg_last_wal_receive_lsn()")
        assert (
            queries[2:]
            == ["SELECT 1", "ROLLBACK"] + ["BEGIN READ ONLY", "SELECT 1", "ROLLBACK"] * 2
        )
    finally:
        trace.close()


def test_rolled_back_keeps_readonly_units_on_the_test_transaction(
    cluster: Cluster, db: Database
) -> None:
    """Under uow.testing.rolled_back, readonly units read the test's own uncommitted writes."""
    with rolled_back(db) as bound:
        with UnitOfWork(bound) as uow:
            uow.session.execute(text(f"INSERT INTO {TABLE} (name) VALUES ('test-only')"))
        with UnitOfWork(bound, readonly=True) as uow:
            assert uow.session.execute(WHERE).one() == (False, cluster.primary.port)
            names = uow.session.execute(text(f"SELECT name FROM {TABLE}")).scalars().all()
            assert names == ["test-only"]
    assert cluster.execute(cluster.primary, f"SELECT count(*) FROM {TABLE}") == [(0,)]


def test_timeout_and_isolation_apply_on_the_replica(cluster: Cluster, db: Database) -> None:
    """timeout= and isolation= hold in a routed unit, whose connection is taken on entry."""
    with UnitOfWork(db, readonly=True, timeout=0.5, isolation="REPEATABLE READ") as uow:
        assert uow.session.execute(WHERE).one()[0] is True
        assert uow.session.execute(text("SHOW statement_timeout")).scalar() == "500ms"
        level = uow.session.execute(text("SHOW transaction_isolation")).scalar()
        assert level == "repeatable read"
