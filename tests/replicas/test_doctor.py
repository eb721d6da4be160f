"""`uow doctor` with read replicas: replication from the primary, each replica's lag."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.replicas.conftest import PASSWORD, TABLE, Cluster
from uow.__main__ import main

Doctor = Callable[..., tuple[int, str]]


@pytest.fixture
def doctor(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    cluster: Cluster,
    app_name: str,
) -> Doctor:
    """Runs `uow doctor ARGS` in-process on the primary; returns (exit code, stdout).

    ``replicas=`` gives the replica URLs (by default, the cluster's standbys).
    """
    for name in list(os.environ):
        if name.startswith(("UOW_", "DATABASE_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("DATABASE_URL", cluster.primary.url)
    monkeypatch.setenv("UOW_APPLICATION_NAME", app_name)

    def run(*args: str, replicas: list[str] | None = None) -> tuple[int, str]:
        urls = [r.url for r in cluster.replicas] if replicas is None else replicas
        monkeypatch.setenv("UOW_REPLICA_URLS", ",".join(urls))
        code = main(["doctor", *args])
        out = capsys.readouterr()
        assert PASSWORD not in out.out + out.err
        return code, out.out

    return run


def report(doctor: Doctor, *args: str, replicas: list[str] | None = None) -> tuple[int, Any]:
    """Run `uow doctor --json`; (exit code, parsed report)."""
    code, out = doctor("--json", *args, replicas=replicas)
    return code, json.loads(out)


def test_healthy_replicas_are_reported_and_exit_0(cluster: Cluster, doctor: Doctor) -> None:
    """The primary lists both streaming standbys; each replica is in recovery with no lag."""
    code, data = report(doctor)
    assert code == 0, data["warnings"]
    assert data["server"]["in_recovery"] is False
    rows = {row["application_name"]: row for row in data["replication"]}
    assert set(rows) == {"replica0", "replica1"}
    for row in rows.values():
        assert row["client_addr"] == "127.0.0.1"
        assert row["state"] == "streaming"
        assert set(row) >= {"write_lag", "flush_lag", "replay_lag", "bytes_behind"}
        assert row["bytes_behind"] >= 0
    assert [r["url"] for r in data["replicas"]] == [
        f"postgresql+psycopg://postgres:***@127.0.0.1:{r.port}/postgres" for r in cluster.replicas
    ]
    for replica in data["replicas"]:
        assert replica["reachable"] is True
        assert replica["in_recovery"] is True
        assert replica["replay_paused"] is False
        assert replica["lag_seconds"] == 0
        assert replica["budget"]["exceeded"] is False
    code, text = doctor()
    assert code == 0
    assert "Replication (standbys streaming from this server)" in text
    assert "Read replicas (UOW_REPLICA_URLS)" in text
    assert "in recovery" in text


def test_a_paused_replica_shows_lag_and_needs_action(cluster: Cluster, doctor: Doctor) -> None:
    """Replay paused and a write on the primary: bytes behind, lag over the threshold, exit 1."""
    paused = cluster.replicas[0]
    cluster.pause_replay(paused)
    cluster.execute(cluster.primary, f"INSERT INTO {TABLE} (name) VALUES ('unseen')")
    time.sleep(0.3)
    code, data = report(doctor, "--max-replica-lag", "0.2")
    assert code == 1
    first, second = data["replicas"]
    assert first["replay_paused"] is True
    assert first["bytes_behind"] > 0
    assert first["lag_seconds"] > 0.2
    assert second["lag_seconds"] < 0.2
    rows = {row["application_name"]: row for row in data["replication"]}
    assert rows["replica0"]["bytes_behind"] > 0
    lagging = [w for w in data["warnings"] if w["code"] == "replica_lag"]
    assert len(lagging) == 1 and f":{paused.port}/" in lagging[0]["message"]
    assert "replay is paused" in lagging[0]["message"]
    # Under the default 30 s threshold the same lag is shown but needs no action.
    code, data = report(doctor)
    assert code == 0 and data["replicas"][0]["bytes_behind"] > 0


def test_an_unreachable_replica_needs_action(cluster: Cluster, doctor: Doctor) -> None:
    """A configured replica that is down is reported, masked, and makes the exit code 1."""
    down = cluster.replicas[1]
    down.stop()
    code, data = report(doctor)
    assert code == 1
    assert data["replicas"][1]["reachable"] is False
    assert "DatabaseUnavailable" in data["replicas"][1]["error"]
    assert [w["code"] for w in data["warnings"]] == ["replica_unreachable"]
    assert f"127.0.0.1:{down.port}" in data["warnings"][0]["message"]
    assert {row["application_name"] for row in data["replication"]} == {"replica0"}


def test_a_primary_listed_as_replica_is_flagged(cluster: Cluster, doctor: Doctor) -> None:
    """A replica URL that points at a server not in recovery gets a warning and exit 1."""
    code, data = report(doctor, replicas=[cluster.primary.url])
    assert code == 1
    assert data["replicas"][0]["in_recovery"] is False
    assert [w["code"] for w in data["warnings"]] == ["replica_not_in_recovery"]
