"""The outage backoff: fails fast while the server is down, probes it again within 0.25 s."""

from __future__ import annotations

import time

import pytest

from uow import DatabaseUnavailable
from uow._engine.outage import ConnectGate


def test_a_long_outage_is_probed_again_within_a_quarter_second() -> None:
    """After many failures the next probe is <= 0.25 s away, so a server back is used at once."""
    counted: list[str] = []
    gate = ConnectGate("postgresql://u:***@db/app", counted.append)
    waits = []
    for _ in range(10):  # a long outage: the backoff has reached its cap
        gate.failed(OSError("connection refused"))
        started = time.monotonic()
        while True:
            try:
                gate.before_connect()  # lets one caller probe once the backoff ends
            except DatabaseUnavailable:
                time.sleep(0.005)
                continue
            break
        waits.append(time.monotonic() - started)
    assert max(waits) <= 0.3  # the cap (0.25 s) plus scheduling slack
    assert min(waits[5:]) >= 0.1  # still a backoff: jittered between half the cap and the cap
    assert counted and set(counted) == {"fast_failures"}


def test_only_one_caller_probes_and_a_success_lets_everyone_in() -> None:
    """While one caller probes, the others fail fast; when it connects, all may connect."""
    gate = ConnectGate("postgresql://u:***@db/app", lambda name: None)
    gate.failed(OSError("connection refused"))
    time.sleep(0.06)  # past the first backoff (at most 0.05 s)
    gate.before_connect()  # this caller probes
    with pytest.raises(DatabaseUnavailable, match="unreachable"):
        gate.before_connect()
    gate.succeeded()
    gate.before_connect()
    gate.before_connect()
