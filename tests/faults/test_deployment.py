"""The example deployed as users deploy it, through a database restart.

``python -m examples.bank serve --workers 4`` against a throwaway server with a tight
``max_connections``, the app connecting as a password role (so the superuser's reserved
slots apply to it), 32 client threads sending real HTTP (80% transfers, half of them on
the async endpoint, 15% reads, 5% deposits, all with idempotency keys; a second variant
sends everything to the sync endpoints), and a ``pg_ctl stop -m fast`` + start in the
middle. The figures (statuses, connection peaks, recovery) are printed with ``-s``.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import make_url

from tests.conftest import libpq_dsn
from tests.faults.helpers import ReadyProbe, check_bank_invariant
from tests.helpers import ROOT
from uow import Database, Settings
from uow.testing import EmbeddedPostgres

WORKERS = 4
POOL_SIZE = 5
BUDGET = WORKERS * POOL_SIZE  # max_overflow is 0: the most the app may ever hold
RESERVED = 3  # superuser_reserved_connections
MAX_CONNECTIONS = BUDGET + RESERVED + 7  # the sampler, the probe, the setup: a tight fit
CLIENTS = 32
ACCOUNTS = 40
OPENING = 1_000_000
ROLE = "bank_app"
ANSWERS = {200, 201, 409, 422, 503, 504}  # anything else (a 500 above all) fails the test
RETRY = {503, 504}
BUCKET = 0.1  # seconds per throughput sample
WINDOW = 5  # buckets: throughput counts as back when a 0.5 s window is at 80% of the usual
RECOVERY_TARGET = 1.0  # seconds from "server accepts again" to >= 80% of the usual rate
RECOVERY_LIMIT = 3.0  # what a loaded 2-core CI machine is held to; the target is printed


@dataclass(frozen=True)
class Deployment:
    """The server's URLs: the app's role, and the superuser's side door."""

    postgres: EmbeddedPostgres
    app_url: str
    admin_url: str


@pytest.fixture(scope="module")
def deployment() -> Iterator[Deployment]:
    """A throwaway cluster: database ``bank`` migrated by the superuser, a DML-only role."""
    postgres = EmbeddedPostgres(
        max_connections=MAX_CONNECTIONS,
        settings={"superuser_reserved_connections": RESERVED},
    ).start()
    try:
        admin_url = postgres.create_database("bank")
        password = uuid.uuid4().hex
        with psycopg.connect(postgres.dsn, autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{password}'")
        app_url = (
            make_url(admin_url)
            .set(username=ROLE, password=password)
            .render_as_string(hide_password=False)
        )
        # As an operator does: the owner migrates, the migrations grant the app its rights.
        subprocess.run(
            [sys.executable, "-m", "examples.bank", "migrate"],
            cwd=ROOT,
            env={**clean_environment(), "DATABASE_URL": app_url, "UOW_MIGRATIONS_URL": admin_url},
            check=True,
            timeout=120,
        )
        yield Deployment(postgres, app_url, admin_url)
    finally:
        postgres.cleanup()


def clean_environment() -> dict[str, str]:
    """This process's environment without any database setting of the developer's."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("UOW_", "DATABASE_URL"))}


def free_port() -> int:
    with socket.socket() as probe:  # released for the server to take
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Server:
    """``serve --workers N`` as a subprocess; its log in a file so no pipe can fill."""

    def __init__(self, url: str, log: Path) -> None:
        self.port, self.log = free_port(), log
        with log.open("w") as stderr:
            self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                [
                    *(sys.executable, "-m", "examples.bank", "serve", "--no-access-log"),
                    *("--workers", str(WORKERS), "--port", str(self.port)),
                ],
                cwd=ROOT,
                env={**clean_environment(), "DATABASE_URL": url, "UOW_POOL_SIZE": str(POOL_SIZE)},
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )

    def wait_started(self) -> list[int]:
        """Wait for every worker's startup; returns their pids."""
        deadline = time.monotonic() + 90  # four interpreters start on a busy machine
        while self.log.read_text().count("Application startup complete.") < WORKERS:
            assert self.process.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.2)
        return [
            int(line.split("Started server process [")[1].split("]")[0])
            for line in self.log.read_text().splitlines()
            if "Started server process [" in line
        ]

    def stop(self) -> int:
        """SIGINT to uvicorn's parent, as Ctrl-C; returns its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise


@dataclass(frozen=True)
class Reply:
    ended: float
    status: int  # 0: no HTTP answer at all (the connection failed)
    what: str
    detail: str  # of an error answer, its first words


class Client:
    """One keep-alive HTTP connection, as a client library holds."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def send(self, method: str, path: str, body: object = None) -> tuple[int, object]:
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if payload else {}
        try:
            self.conn.request(method, path, body=payload, headers=headers)
            reply = self.conn.getresponse()
            data = reply.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()  # reconnects on the next request
            return 0, None
        return reply.status, json.loads(data) if data else None


def sample_connections(dsn: str, stop: threading.Event, peaks: dict[str, int]) -> None:
    """Every 100 ms: the app role's server connections, in all and per process."""
    conn: psycopg.Connection[tuple[int, int, int]] | None = None
    while not stop.wait(0.1):
        try:
            if conn is None or conn.closed:
                conn = psycopg.connect(dsn, autocommit=True, connect_timeout=2)
            row = conn.execute(
                "SELECT coalesce(sum(n), 0), count(*), coalesce(max(n), 0) FROM (SELECT count(*)"
                " AS n FROM pg_stat_activity WHERE usename = %s GROUP BY application_name) AS p",
                (ROLE,),
            ).fetchone()
        except psycopg.OperationalError:
            conn = None  # the server is restarting
            continue
        assert row is not None
        for name, value in zip(("total", "processes", "process"), row, strict=True):
            peaks[name] = max(peaks.get(name, 0), int(value))
    if conn is not None:
        conn.close()


class OverBudget(AssertionError):
    """The app held more server connections than WORKERS x (pool_size + max_overflow)."""


@pytest.mark.parametrize(
    "mix",
    ["mixed", "sync"],
)
def test_four_workers_through_a_restart(deployment: Deployment, mix: str, tmp_path: Path) -> None:
    """serve --workers 4, 32 HTTP clients, a restart: no 500, in budget, invariant, recovery."""
    with psycopg.connect(libpq_dsn(deployment.admin_url), autocommit=True) as conn:
        conn.execute("TRUNCATE accounts, ledger RESTART IDENTITY CASCADE")
    server = Server(deployment.app_url, tmp_path / "server.log")
    workers: list[int] = []
    try:
        workers = server.wait_started()
        setup = Client(server.port)
        for _ in range(ACCOUNTS):
            status, body = setup.send("POST", "/accounts", {"owner": "d", "initial": OPENING})
            assert status == 201, body
        setup.conn.close()
        replies, committed, deposited, gave_up, peaks = run_load(deployment, server.port, mix)
    finally:
        exit_status = server.stop()
    log = server.log.read_text()
    time.sleep(0.5)  # the workers' exit is the parent's wait; give /proc a moment
    leftovers = [pid for pid in workers if Path(f"/proc/{pid}").exists()]
    with Database(Settings(url=deployment.admin_url, application_name="deploy-check")) as db:
        audit = check_bank_invariant(
            db, total=ACCOUNTS * OPENING + sum(deposited), committed=committed
        )
    assert exit_status == 0, log[-3000:]
    assert len(workers) == WORKERS and not leftovers, (workers, leftovers)
    assert gave_up == 0
    assert audit.accounts == ACCOUNTS
    assert "Traceback" not in log, log[-5000:]
    assert replies
    if peaks.get("total", 0) > BUDGET:  # last, so the variant expected to fail here checks all
        raise OverBudget(f"{peaks} (budget {BUDGET})")


def run_load(
    deployment: Deployment, port: int, mix: str
) -> tuple[list[Reply], list[str], list[int], int, dict[str, int]]:
    """The load and the restart; asserts the statuses and the recovery."""
    replies: list[Reply] = []
    committed: list[str] = []  # keys of the transfers a client saw acknowledged
    deposited: list[int] = []
    gave_up = 0
    lock = threading.Lock()
    stop = threading.Event()

    async_share = 0.5 if mix == "mixed" else 0.0

    def client(i: int) -> None:
        nonlocal gave_up
        rng, http_client = random.Random(i), Client(port)

        def call(what: str, method: str, path: str, body: object = None) -> tuple[int, object]:
            status, answer = http_client.send(method, path, body)
            detail = str(answer.get("detail", ""))[:50] if isinstance(answer, dict) else ""
            with lock:
                replies.append(Reply(time.monotonic(), status, what, detail))
            return status, answer

        while not stop.is_set():
            pick, account, on_async = (
                rng.random(),
                rng.randint(1, ACCOUNTS),
                rng.random() < async_share,
            )
            prefix = "/async" if on_async else ""
            if pick < 0.15:
                call("read", "GET", f"{prefix}/accounts/{account}")
                continue
            key, amount = uuid.uuid4().hex, rng.randint(1, 1000)
            body: dict[str, object] = {"amount": amount, "key": key}
            if pick < 0.20:
                what, path = "deposit", f"/accounts/{account}/deposits"
            else:
                target = rng.choice([a for a in range(1, ACCOUNTS + 1) if a != account])
                what, path = f"{prefix[1:]} transfer".strip(), f"{prefix}/transfers"
                body |= {"source_id": account, "target_id": target}
            deadline = time.monotonic() + 20
            # The same key until a definite answer, as the 503's body asks. Sooner than
            # Retry-After, so that the recovery measured is the server's, not the clients'.
            while (status := call(what, "POST", path, body)[0]) in RETRY or status == 0:
                if time.monotonic() > deadline:
                    with lock:
                        gave_up += 1
                    break
                time.sleep(0.05)
            with lock:
                if status in (200, 201) and what == "deposit":
                    deposited.append(amount)
                elif status in (200, 201):
                    committed.append(key)
        http_client.conn.close()

    peaks: dict[str, int] = {}
    sampling = threading.Event()
    sampler = threading.Thread(
        target=sample_connections, args=(deployment.postgres.dsn, sampling, peaks), daemon=True
    )
    sampler.start()
    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(CLIENTS)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    try:
        time.sleep(4.0)  # warm: every worker's pool full, the rate steady
        with ReadyProbe(deployment.postgres.dsn) as probe:
            restart_began = time.monotonic()
            deployment.postgres.restart(down_for=1.0)
            time.sleep(4.0)
    finally:
        stop.set()
        for thread in threads:
            thread.join(40)
        sampling.set()
        sampler.join(10)
    assert not any(thread.is_alive() for thread in threads)

    statuses = Counter((r.what, r.status) for r in replies)
    bad = {k: n for k, n in statuses.items() if k[1] not in ANSWERS}
    assert probe.ready is not None, "the probe missed the restart"
    ready = probe.ready
    buckets = Counter(
        int((r.ended - started) // BUCKET) for r in replies if r.status in (200, 201, 409)
    )
    warm = [buckets[b] for b in range(int(1.5 / BUCKET), int((restart_began - started) / BUCKET))]
    usual = statistics.mean(warm)  # per bucket; a mean, as the loaded machine's rate is noisy
    # The first window of WINDOW buckets, all after the server accepted again, at >= 80%.
    first = int((ready - started) // BUCKET) + 1
    back = next(
        (
            b
            for b in range(first + WINDOW - 1, first + 80)
            if sum(buckets[b - k] for k in range(WINDOW)) >= 0.8 * usual * WINDOW
        ),
        None,
    )
    recovery = None if back is None else started + (back + 1) * BUCKET - ready
    print(
        f"\n[deployment {mix}] {WORKERS} workers x pool {POOL_SIZE}, max_connections "
        f"{MAX_CONNECTIONS}, {CLIENTS} clients, {len(replies)} requests: "
        f"{dict(sorted(statuses.items()))}; peak app connections {peaks} (budget {BUDGET}); "
        f"usual rate {usual:.1f} per {BUCKET * 1000:.0f} ms; server down "
        f"{ready - (probe.went_down or ready):.2f}s; recovery to 80% "
        f"{'never' if recovery is None else f'{recovery * 1000:.0f} ms'} after it accepted "
        f"again (target {RECOVERY_TARGET * 1000:.0f} ms); {len(committed)} transfers, "
        f"{len(deposited)} deposits acknowledged, {gave_up} given up"
    )
    phases = Counter(
        ("before" if r.ended < restart_began else "after", r.detail)
        for r in replies
        if r.status in RETRY
    )
    print(f"[deployment {mix}] retryable answers: {dict(phases)}")
    print(f"[deployment {mix}] per 100 ms: {[buckets[b] for b in range(max(buckets) + 1)]}")
    assert not bad, bad
    assert usual > 0 and committed
    assert recovery is not None and recovery <= RECOVERY_LIMIT, recovery
    return replies, committed, deposited, gave_up, peaks
