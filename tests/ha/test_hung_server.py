"""A server that stops answering: no unit waits much longer than its statement timeout.

The server runs in a network namespace (:class:`~uow.testing._netns.NamespacedPostgres`)
so that two faults no proxy can fake are real: a black hole (iptables drops every
packet; nothing closes, data stays unacknowledged) and a frozen server (SIGSTOP to every
process; the kernel still accepts and acknowledges). 8 workers (threads, or tasks) write
rows with unique keys throughout. Scaled settings: ``statement_timeout=2``,
``connect_timeout=2``, ``pool_timeout=3``; the targets scale with them.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from tests.faults.driver import Driver
from tests.helpers import wait_for
from uow import Database, Settings
from uow.testing._netns import NamespacedPostgres

PG15 = "/usr/lib/postgresql/15/bin"
STATEMENT_TIMEOUT = 2.0
CONNECT_TIMEOUT = 2.0
POOL_TIMEOUT = 3.0
IN_FLIGHT_BOUND = STATEMENT_TIMEOUT + 15  # the target: statement_timeout + 15 s
NEW_UNIT_BOUND = max(POOL_TIMEOUT, CONNECT_TIMEOUT) + 2  # + slack for a loaded machine
HEALED_WITHIN = 2.0
FAULT_FOR = IN_FLIGHT_BOUND + 1  # longer than the bound: only uow can end the wait
# Where the test's unit lost its connection before COMMIT, or during it.
LOST = {"ConnectionLost", "CommitOutcomeUnknown"}
EXPECTED_DURING_FAULT = LOST | {"DatabaseUnavailable", "PoolExhausted"}
FAULTS = ["black_hole", "freeze"]


@pytest.fixture(scope="module")
def server() -> Iterator[NamespacedPostgres]:
    """A throwaway PostgreSQL 15 reached through a network namespace, with a writes table."""
    postgres = NamespacedPostgres(bin_dir=PG15, max_connections=60)
    try:
        postgres.start()
        with psycopg.connect(postgres.dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE hung_writes (k text PRIMARY KEY)")
        yield postgres
    finally:
        postgres.cleanup()


@pytest.fixture(params=[False, True], ids=["sync", "async"])
def driver(request: pytest.FixtureRequest) -> Iterator[Driver]:
    """Workers as threads with UnitOfWork, or as tasks with AsyncUnitOfWork."""
    made = Driver(asynchronous=request.param)
    yield made
    made.close([])


@pytest.fixture
def make_database(server: NamespacedPostgres, driver: Driver) -> Iterator[Callable[..., Database]]:
    """Databases with the scaled timeouts; at the end none has anything left open."""
    name = f"uow-hung-{uuid.uuid4().hex[:8]}"
    made: list[Database] = []

    def make(**overrides: Any) -> Database:
        settings = {
            "url": server.url,
            "application_name": name,
            "statement_timeout": STATEMENT_TIMEOUT,
            "connect_timeout": CONNECT_TIMEOUT,
            "pool_timeout": POOL_TIMEOUT,
            "pool_size": 4,
            "max_overflow": 4,
            # The server ends the sessions of connections closed during a black hole
            # (their FIN was dropped too) when this runs out.
            "idle_in_transaction_timeout": 3,
            "long_transaction_threshold": 0,
        }
        made.append(Database(Settings(**{**settings, **overrides})))
        return made[-1]

    try:
        yield make
        assert [db.stats().pool_checked_out for db in made] == [0] * len(made)
        driver.close(made)
        assert [db.stats().pool_checked_out for db in made] == [0] * len(made)
        with psycopg.connect(server.dsn, autocommit=True) as side:

            def stuck() -> list[tuple[Any, ...]]:
                return side.execute(
                    "SELECT pid, state FROM pg_stat_activity"
                    " WHERE application_name LIKE %s AND state LIKE 'idle in transaction%%'",
                    (f"{name}%",),
                ).fetchall()

            wait_for(lambda: not stuck(), timeout=10, what="sessions idle in transaction to end")
    finally:
        for db in made:
            db.dispose()


@pytest.fixture
def database(make_database: Callable[..., Database]) -> Database:
    """The application's Database, with the scaled timeouts."""
    return make_database()


@dataclass
class Unit:
    worker: int
    start: float
    end: float
    outcome: str


class Writers:
    """8 workers writing one unique row per unit, until stopped; each unit is recorded."""

    def __init__(self, driver: Driver, db: Database, count: int = 8) -> None:
        self.units: list[Unit] = []
        self._stop = threading.Event()
        self._driver, self._db = driver, db
        self._workers = driver.start(count, self._work, timeout=120)

    def _work(self, i: int) -> None:
        while not self._stop.is_set():
            start = time.monotonic()
            try:
                with self._driver.unit(self._db) as unit:
                    unit.execute("INSERT INTO hung_writes VALUES (:k)", {"k": uuid.uuid4().hex})
                outcome = "ok"
            except Exception as exc:
                outcome = type(exc).__name__
            self.units.append(Unit(i, start, time.monotonic(), outcome))
            if outcome != "ok":
                self._driver.sleep(0.05)

    def wait_until_all_wrote(self) -> None:
        wait_for(
            lambda: len({u.worker for u in self.units if u.outcome == "ok"}) == 8,
            timeout=30,
            what="every worker to write once",
        )

    def stop(self) -> None:
        self._stop.set()
        self._workers.join()


def _summary(units: list[Unit], origin: float) -> str:
    rows = [
        f"{u.worker}: {u.start - origin:+.2f}s for {u.end - u.start:.2f}s {u.outcome}"
        for u in units
    ]
    return "\n".join(rows[-40:])


@pytest.mark.parametrize("fault", FAULTS)
def test_in_flight_units_fail_within_the_bound_and_writes_resume_after_healing(
    server: NamespacedPostgres,
    database: Database,
    driver: Driver,
    fault: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """In flight: fail within statement_timeout + 15 s; new: within pool/connect timeout."""
    writers = Writers(driver, database)
    try:
        writers.wait_until_all_wrote()
        with caplog.at_level(logging.WARNING, logger="uow"), getattr(server, fault)():
            began = time.monotonic()
            time.sleep(FAULT_FOR)
        healed = time.monotonic()
        time.sleep(HEALED_WITHIN + 3)
    finally:
        writers.stop()
    units = writers.units
    log = _summary(units, began)

    longest = max(units, key=lambda u: u.end - u.start)
    assert longest.end - longest.start <= IN_FLIGHT_BOUND, f"a unit blocked too long:\n{log}"
    during = [u for u in units if u.end > began + 0.5 and u.start < healed]
    assert Counter(u.outcome for u in during).keys() <= EXPECTED_DURING_FAULT | {"ok"}, log
    lost = [u for u in during if u.outcome in LOST]
    assert lost, f"no unit was in flight when the server stopped answering:\n{log}"
    # Once a connection was closed for not answering, the server is known to be hung:
    # a new unit does not start on its idle connections, and a new connection fails.
    known = min(u.end for u in lost)
    new = [u for u in during if u.start > known + 0.1 and u.end < healed]
    assert new, log
    slow = [u for u in new if u.end - u.start > NEW_UNIT_BOUND]
    assert not slow, f"new units waited past {NEW_UNIT_BOUND}s:\n{_summary(slow, began)}"
    assert all(u.outcome != "ok" for u in new), log

    after = [u for u in units if u.end > healed]
    first_ok = min(u.end for u in after if u.outcome == "ok")
    assert first_ok - healed <= HEALED_WITHIN, log
    late = [u for u in after if u.start > healed + HEALED_WITHIN and u.outcome != "ok"]
    assert not late, f"units failed {HEALED_WITHIN}s after healing:\n{_summary(late, healed)}"

    warnings = [r.getMessage() for r in caplog.records if "did not answer" in r.getMessage()]
    assert warnings, "no warning named the server that stopped answering"
    assert server.host in warnings[0] and "limit 7s" in warnings[0], warnings[0]
    assert server.password not in caplog.text
    # Counted once per connection closed, as warned.
    assert database.stats().hung_connections == len(warnings)


@pytest.mark.parametrize("fault", FAULTS)
def test_the_checkout_ping_is_bounded(
    server: NamespacedPostgres, database: Database, driver: Driver, fault: str
) -> None:
    """A connection idle past pool_pre_ping_idle, taken during a hang: DatabaseUnavailable soon."""
    outcome: list[tuple[str, float]] = []

    def one_unit(i: int) -> None:
        start = time.monotonic()
        try:
            with driver.unit(database) as unit:
                unit.execute("INSERT INTO hung_writes VALUES (:k)", {"k": uuid.uuid4().hex})
            outcome.append(("ok", time.monotonic() - start))
        except Exception as exc:
            outcome.append((type(exc).__name__, time.monotonic() - start))

    driver.run(1, one_unit, timeout=30)  # opens the pooled connection
    time.sleep(database.settings.pool_pre_ping_idle + 0.5)  # idle: the next checkout pings
    with getattr(server, fault)():
        driver.run(1, one_unit, timeout=60)
    # The ping's limit (connect_timeout), then a new connection's (connect_timeout).
    kind, took = outcome[-1]
    assert kind == "DatabaseUnavailable" and took <= 2 * CONNECT_TIMEOUT + 3, outcome
    deadline = time.monotonic() + HEALED_WITHIN
    while time.monotonic() < deadline and outcome[-1][0] != "ok":
        driver.run(1, one_unit, timeout=30)
    assert outcome[-1][0] == "ok", outcome


def test_tcp_user_timeout_reaches_the_socket(server: NamespacedPostgres) -> None:
    """The kernel gets tcp_user_timeout = (statement_timeout + 10 s) in ms on uow's sockets."""
    settings = Settings(url=server.url, statement_timeout=STATEMENT_TIMEOUT)
    with Database(settings) as db, db.engine.connect() as conn:
        raw = conn.connection.driver_connection
        assert raw is not None
        sock = socket.socket(fileno=raw.pgconn.socket)
        try:
            value = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)
        finally:
            sock.detach()  # the descriptor stays libpq's
    assert value == round((STATEMENT_TIMEOUT + 10) * 1000)


def test_slow_units_on_a_healthy_server_are_not_cut(
    make_database: Callable[..., Database], driver: Driver
) -> None:
    """Past the default limit (7 s) but legitimately: a unit's own timeout=, time in Python."""
    limit = STATEMENT_TIMEOUT + 5
    database = make_database(idle_in_transaction_timeout=30)

    def slow(i: int) -> None:
        # A statement longer than the default limit, within the unit's own timeout=.
        with driver.unit(database, timeout=limit + 4) as unit:
            unit.execute("SELECT pg_sleep(:s)", {"s": limit + 1})
        # Idle in Python past the limit between statements, and a statement near the
        # server's own timeout.
        with driver.unit(database) as unit:
            unit.execute("SELECT pg_sleep(:s)", {"s": STATEMENT_TIMEOUT * 0.8})
            driver.sleep(limit + 1)
            unit.execute("INSERT INTO hung_writes VALUES (:k)", {"k": uuid.uuid4().hex})

    driver.run(2, slow, timeout=60)
    assert database.stats().connections_lost == 0
