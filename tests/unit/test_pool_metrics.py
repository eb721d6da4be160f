"""The pool's metrics recorder and PoolStats, without a database."""

from __future__ import annotations

import dataclasses
import time

from uow import PoolStats
from uow._engine.metrics import PoolMetrics


def test_requests_queue_and_timeouts_are_counted() -> None:
    """A queued request that times out counts as queued, an error and a timeout, with its wait."""
    metrics = PoolMetrics()
    metrics.request_done(time.monotonic())
    metrics.enter_queue()
    assert metrics.waiting == 1
    metrics.leave_queue()
    metrics.request_done(time.monotonic() - 0.25, timeout=True)
    metrics.request_done(time.monotonic(), error=True)
    assert (metrics.requests, metrics.queued, metrics.waiting) == (3, 1, 0)
    assert (metrics.request_errors, metrics.timeouts) == (2, 1)
    assert metrics.wait_seconds >= 0.25


def test_stats_add_field_by_field() -> None:
    """Two pools' stats add up field by field (the sync and the asyncio pool), except the
    limits they share (pool_min, pool_max): one budget for both, not twice."""
    names = [field.name for field in dataclasses.fields(PoolStats)]
    one = PoolStats(**dict.fromkeys(names, 1))
    two = PoolStats(**{name: i for i, name in enumerate(names)})
    total = one + two
    shared = {"pool_min", "pool_max"}
    expected = [max(1, i) if name in shared else i + 1 for i, name in enumerate(names)]
    assert [getattr(total, name) for name in names] == expected
