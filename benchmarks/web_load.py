"""The HTTP side of ``benchmarks/web.py``: the clients, the readiness wait and the probes.

Clients are threads, each on its own keep-alive ``http.client`` connection, sending the
mix (80% transfers, 15% reads, 5% deposits between ``ACCOUNTS`` accounts) one request
at a time, the same requests to either app.
"""

from __future__ import annotations

import http.client
import json
import random
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import IO

ACCOUNTS = 1000
REQUEST_TIMEOUT = 10.0  # seconds a client waits for an answer before counting a timeout


@dataclass
class Tally:
    """What the clients saw in one measured window, appended from many threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    latencies: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    served: set[int] = field(default_factory=set)

    def record(self, client: int, outcome: str, seconds: float | None) -> None:
        with self.lock:
            self.statuses[outcome] = self.statuses.get(outcome, 0) + 1
            if seconds is not None:
                self.latencies.append(seconds)
                if outcome.startswith("2"):
                    self.served.add(client)


def request(conn: http.client.HTTPConnection, rng: random.Random) -> int:
    """Send one request of the mix on ``conn``; return the status."""
    roll = rng.random()
    a, b = rng.sample(range(1, ACCOUNTS + 1), 2)
    key = uuid.uuid4().hex
    if roll < 0.80:
        body = {"source_id": a, "target_id": b, "amount": rng.randint(1, 100), "key": key}
        method, path = "POST", "/transfers"
    elif roll < 0.95:
        method, path, body = "GET", f"/accounts/{a}", None
    else:
        method, path, body = "POST", f"/accounts/{a}/deposits", {"amount": 100, "key": key}
    payload = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"} if payload else {}
    conn.request(method, path, body=payload, headers=headers)
    response = conn.getresponse()
    response.read()
    return response.status


def client(
    number: int, port: int, tally: list[Tally | None], stop: threading.Event, seed: int
) -> None:
    """Loop requests until ``stop``; record into ``tally[0]`` when a window is open."""
    rng = random.Random(seed * 100_000 + number)  # noqa: S311 - a load mix, not a secret
    conn: http.client.HTTPConnection | None = None
    while not stop.is_set():
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
        started = time.monotonic()
        seconds: float | None
        try:
            outcome = str(request(conn, rng))
            seconds = time.monotonic() - started
        except TimeoutError:
            outcome, seconds = "timeout", None
        except (OSError, http.client.HTTPException):
            outcome, seconds = "connection error", None
        if seconds is None:
            conn.close()
            conn = None
            stop.wait(0.05)  # as a browser or a retrying client would, before reconnecting
        window = tally[0]
        if window is not None:
            window.record(number, outcome, seconds)
    if conn is not None:
        conn.close()


def wait_ready(
    port: int, process: subprocess.Popen[bytes], log: IO[bytes], limit: float = 120.0
) -> None:
    """Wait until the app answers a read; fail with the server's output if it exits."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log.seek(0)
            tail = log.read().decode(errors="replace")[-3000:]
            raise RuntimeError(f"the server exited with {process.returncode}:\n{tail}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/accounts/1")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the server did not answer within {limit:g} s")


def stuck_probes(port: int, count: int) -> int:
    """Fresh-connection requests left unanswered for 5 s, sent all at once."""
    results: list[bool] = []

    def probe() -> None:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/accounts/1")
            conn.getresponse().read()
            results.append(True)
        except OSError:
            results.append(False)

    threads = [threading.Thread(target=probe) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results.count(False)
