"""Exhaustion: ten times more callers than connections, on a server with few slots to spare."""

from __future__ import annotations

import time
from collections import Counter

from tests.faults.conftest import MAX_CONNECTIONS
from tests.faults.driver import Driver
from tests.faults.helpers import FaultWatch, kind

POOL_SIZE = 4
CALLERS = 40
POOL_TIMEOUT = 1.0
HOLD = 0.3  # seconds each unit holds its connection


def test_overload_fails_fast_with_pool_exhausted_within_budget(
    fault: FaultWatch, driver: Driver
) -> None:
    """40 callers on pool_size=4: <=4 server sessions, the unserved get PoolExhausted at ~1 s."""
    db = fault.database(pool_size=POOL_SIZE, max_overflow=0, pool_timeout=POOL_TIMEOUT)
    log_start = fault.server.log_path.stat().st_size
    start = driver.barrier(CALLERS)
    outcomes: list[tuple[str, float]] = []

    def caller(i: int) -> None:
        start()
        began = time.monotonic()
        try:
            with driver.unit(db) as unit:
                unit.execute("SELECT pg_sleep(:s)", {"s": HOLD})
        except Exception as exc:
            outcomes.append((kind(exc), time.monotonic() - began))
        else:
            outcomes.append(("ok", time.monotonic() - began))

    with fault.sampling() as sampler:
        driver.run(CALLERS, caller, timeout=60)

    by_kind = Counter(name for name, _ in outcomes)
    waits = sorted(waited for name, waited in outcomes if name == "PoolExhausted")
    ok_times = sorted(waited for name, waited in outcomes if name == "ok")
    log = fault.server.log_path.read_bytes()[log_start:].decode(errors="replace")
    end = fault.assert_clean()
    print(
        f"\n[exhaustion, {driver}] {CALLERS} callers holding {HOLD}s on pool_size={POOL_SIZE}, "
        f"pool_timeout={POOL_TIMEOUT:g}s, max_connections={MAX_CONNECTIONS}: {dict(by_kind)}; "
        f"PoolExhausted after {waits[0]:.2f}-{waits[-1]:.2f}s; successes took "
        f"{ok_times[0]:.2f}-{ok_times[-1]:.2f}s; {sampler}; "
        f"'too many clients' in server log: {log.count('too many clients')}; {end}"
    )
    assert set(by_kind) == {"ok", "PoolExhausted"}, f"unexpected errors: {dict(by_kind)}"
    # First come, first served: POOL_SIZE at a time for pool_timeout / HOLD rounds, about 16.
    assert POOL_SIZE <= by_kind["ok"] <= POOL_SIZE * (POOL_TIMEOUT / HOLD + 2)
    assert all(POOL_TIMEOUT <= waited <= POOL_TIMEOUT + 1 for waited in waits), waits
    assert all(waited <= POOL_TIMEOUT + HOLD + 1 for waited in ok_times), ok_times
    assert 1 <= sampler.peak_connections <= POOL_SIZE
    assert sampler.peak_checked_out <= POOL_SIZE
    assert "too many clients" not in log
    assert db.stats().requests_waiting == 0
