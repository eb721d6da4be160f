"""GET /metrics: the bank API's pool metrics in Prometheus' text format, over real HTTP."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from examples.bank.api import create_app
from tests.examples.test_api import call, open_account, serving
from uow import Database

PRIMARY = (("pool", "primary"),)


def scrape(api: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """GET /metrics and parse it; samples keyed by name and sorted labels."""
    with urllib.request.urlopen(f"{api}/metrics", timeout=10) as response:  # noqa: S310
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        exposition = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }


@pytest.fixture
def api(bank_db: Database) -> Iterator[str]:
    """The bank API on empty tables, served over HTTP; yields its base URL."""
    with serving(create_app(bank_db)) as url:
        yield url


def test_metrics_move_with_transfers(api: str) -> None:
    """Each transfer, sync or async, is one more pool request; nothing is left checked out."""
    alice, bob = open_account(api, "alice", 10_000), open_account(api, "bob")
    before = scrape(api)
    for i in range(5):
        order = {"source_id": alice, "target_id": bob, "amount": 100, "key": f"m-{i}"}
        assert call("POST", f"{api}/transfers", order)[0] == 201
    for i in range(3):
        order = {"source_id": alice, "target_id": bob, "amount": 100, "key": f"a-{i}"}
        assert call("POST", f"{api}/async/transfers", order)[0] == 201
    after = scrape(api)
    requests = "uow_pool_requests_total", PRIMARY
    assert after[requests] - before[requests] == 8
    usage = "uow_pool_usage_seconds_total", PRIMARY
    assert after[usage] > before[usage]
    assert after[("uow_pool_connections", (*PRIMARY, ("state", "active")))] == 0
    assert after[("uow_pool_connections", (*PRIMARY, ("state", "idle")))] >= 1
    assert after[("uow_pool_waiting", PRIMARY)] == 0
    assert after[("uow_pool_timeouts_total", PRIMARY)] == 0
    assert after[("uow_pool_connects_total", PRIMARY)] >= 2  # the sync and the asyncio pool
