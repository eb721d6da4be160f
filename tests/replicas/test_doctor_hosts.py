"""`uow doctor` with several hosts in the URL: each host's role, reachability and lag."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import make_url

from tests.helpers import wait_for
from tests.replicas.conftest import PASSWORD, TABLE, Cluster
from uow.__main__ import main
from uow.testing import EmbeddedPostgres

Doctor = Callable[..., tuple[int, Any, str]]
FORMS = ("netloc", "lists", "repeated")


def multi_host_url(
    servers: list[EmbeddedPostgres], form: str = "netloc", *, hosts: list[str] | None = None
) -> Callable[..., str]:
    """A function of query parameters giving the URL over ``servers`` in one ``form``.

    ``hosts`` names each server (127.0.0.1 by default).
    """
    names = hosts or [s.host for s in servers]
    pairs = [(name, str(s.port)) for name, s in zip(names, servers, strict=True)]

    def build(**query: str) -> str:
        bare = make_url(servers[0].url)._replace(host=None, port=None).update_query_dict(query)
        if form == "lists":
            host, port = (",".join(column) for column in zip(*pairs, strict=True))
            bare = bare.update_query_dict({"host": host, "port": port})
        elif form == "repeated":
            bare = bare.update_query_pairs([("host", f"{h}:{p}") for h, p in pairs])
        text = bare.render_as_string(hide_password=False)
        if form == "netloc":
            text = text.replace("@/", "@" + ",".join(f"{h}:{p}" for h, p in pairs) + "/", 1)
        return text

    return build


@pytest.fixture
def doctor(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], app_name: str
) -> Doctor:
    """Runs `uow doctor --json ARGS` in-process on a URL; (exit code, parsed stdout, stderr)."""
    for name in list(os.environ):
        if name.startswith(("UOW_", "DATABASE_", "PG")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("UOW_APPLICATION_NAME", app_name)

    def run(url: str, *args: str) -> tuple[int, Any, str]:
        monkeypatch.setenv("DATABASE_URL", url)
        code = main(["doctor", "--json", *args])
        out = capsys.readouterr()
        assert PASSWORD not in out.out + out.err
        assert out.out, out.err
        return code, json.loads(out.out), out.err

    return run


def text_report(capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Runs `uow doctor` (text) with the DATABASE_URL already set; (exit code, stdout)."""
    code = main(["doctor"])
    out = capsys.readouterr()
    assert PASSWORD not in out.out + out.err
    return code, out.out


def codes(data: dict[str, Any]) -> list[str]:
    """The codes of the report's warnings, in order."""
    return [w["code"] for w in data["warnings"]]


@pytest.fixture
def read_only_primary(cluster: Cluster) -> Iterator[None]:
    """The primary with default_transaction_read_only=on for every new session."""
    writable = f"{cluster.primary.dsn} options='-c default_transaction_read_only=off'"

    def alter(sql: str) -> None:
        with psycopg.connect(writable, autocommit=True) as conn:
            conn.execute(sql)
            conn.execute("SELECT pg_reload_conf()")

    def current() -> str:
        return str(cluster.execute(cluster.primary, "SHOW default_transaction_read_only")[0][0])

    alter("ALTER SYSTEM SET default_transaction_read_only = on")
    try:
        wait_for(lambda: current() == "on", what="the primary to turn read-only")
        yield
    finally:
        alter("ALTER SYSTEM RESET default_transaction_read_only")
        wait_for(lambda: current() == "off", what="the primary to accept writes again")


@pytest.mark.parametrize("form", FORMS)
def test_each_host_shows_its_role_and_lag(
    cluster: Cluster, doctor: Doctor, capsys: pytest.CaptureFixture[str], form: str
) -> None:
    """Standby first, primary second, read-write: both roles and the lag; exit 0, no proxy."""
    standby = cluster.replicas[0]
    url = multi_host_url([standby, cluster.primary], form)(target_session_attrs="read-write")
    code, data, _ = doctor(url)
    assert code == 0, data["warnings"]
    assert data["warnings"] == []  # no "proxy in between", no host finding
    assert data["pgbouncer"] == {"detected": False}
    first, second = data["hosts"]
    assert (first["port"], first["reachable"], first["role"], first["connected"]) == (
        str(standby.port),
        True,
        "standby",
        False,
    )
    assert (second["port"], second["reachable"], second["role"], second["connected"]) == (
        str(cluster.primary.port),
        True,
        "primary",
        True,
    )
    assert first["in_hot_standby"] == "on" and second["in_hot_standby"] == "off"
    # Caught up (the fixture waited); a background WAL record may be in flight.
    assert 0 <= first["lag_seconds"] < 5 and first["bytes_behind"] >= 0
    assert first["replay_paused"] is False
    assert {s["application_name"] for s in second["standbys"]} == {"replica0", "replica1"}
    assert all(s["state"] == "streaming" for s in second["standbys"])
    code, text = text_report(capsys)
    assert code == 0
    table = text.split("Hosts (in the order libpq tries them)\n", 1)[1]
    standby_row, primary_row = table.splitlines()[2:4]
    assert f"{standby.port} " in standby_row and " standby " in standby_row
    assert f"{cluster.primary.port} " in primary_row and " primary " in primary_row
    assert "2 streaming, replay lag <= " in primary_row
    assert "No warnings." in text


@pytest.mark.parametrize("form", FORMS)
def test_several_hosts_without_read_write_need_action(
    cluster: Cluster, doctor: Doctor, form: str
) -> None:
    """Without target_session_attrs libpq takes the standby listed first: ACTION, exit 1."""
    standby = cluster.replicas[0]
    code, data, _ = doctor(multi_host_url([standby, cluster.primary], form)())
    assert code == 1
    assert codes(data) == ["target_session_attrs_missing"]
    assert "target_session_attrs=read-write" in data["warnings"][0]["advice"]
    assert data["server"]["in_recovery"] is True  # the doctor, like the pool, got the standby
    assert [(h["role"], h["connected"]) for h in data["hosts"]] == [
        ("standby", True),
        ("primary", False),
    ]
    code, data, _ = doctor(
        multi_host_url([standby, cluster.primary], form)(target_session_attrs="primary")
    )
    assert code == 0, data["warnings"]


def test_a_stopped_host_is_unreachable_and_the_rest_is_reported(
    cluster: Cluster, doctor: Doctor, capsys: pytest.CaptureFixture[str]
) -> None:
    """One host down: reachable no, libpq's first line of error, ACTION; the primary's report."""
    down = cluster.replicas[1]
    down.stop()
    url = multi_host_url([cluster.primary, down])(target_session_attrs="read-write")
    started = time.monotonic()
    code, data, _ = doctor(url)
    assert time.monotonic() - started < 30
    assert code == 1
    assert codes(data) == ["host_unreachable"]
    assert f"127.0.0.1:{down.port}" in data["warnings"][0]["message"]
    primary, gone = data["hosts"]
    assert (primary["role"], primary["reachable"], primary["connected"]) == ("primary", True, True)
    assert {s["application_name"] for s in primary["standbys"]} == {"replica0"}
    assert (gone["reachable"], gone["role"], gone["lag_seconds"]) == (False, None, None)
    assert gone["error"].startswith("OperationalError: ") and "\n" not in gone["error"]
    assert "Connection refused" in gone["error"]
    assert data["server"]["version"] and data["budget"]["needed"] > 0
    code, text = text_report(capsys)
    assert code == 1
    assert any(f"{down.port} " in line and " no " in line for line in text.splitlines())


def test_a_hung_host_costs_the_probe_timeout(cluster: Cluster, doctor: Doctor) -> None:
    """A standby whose postmaster is stopped (SIGSTOP: the kernel still accepts the TCP
    connection) is reported unreachable after the probe's short timeout."""
    hung = cluster.replicas[1]
    postmaster = int((hung.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
    url = multi_host_url([cluster.primary, hung])(target_session_attrs="read-write")
    os.kill(postmaster, signal.SIGSTOP)
    try:
        started = time.monotonic()
        code, data, _ = doctor(url)
        elapsed = time.monotonic() - started
    finally:
        os.kill(postmaster, signal.SIGCONT)
    assert code == 1
    assert codes(data) == ["host_unreachable"]
    assert data["hosts"][1]["reachable"] is False and "timeout" in data["hosts"][1]["error"]
    # 3 s of connect_timeout, and a loaded machine's slack.
    assert 2 <= elapsed < 20, elapsed


def test_no_writable_host_is_reported_even_without_a_connection(
    cluster: Cluster, doctor: Doctor, read_only_primary: None
) -> None:
    """A read-only primary and a standby: read-write finds no server (exit 2) but each host
    is shown with its role; with primary, libpq takes the read-only one: ACTION."""
    build = multi_host_url([cluster.primary, cluster.replicas[0]])
    code, data, err = doctor(build(target_session_attrs="read-write"))
    assert code == 2
    assert "cannot reach" in err
    assert data["exit_code"] == 2 and "(ServerReadOnly)" in data["error"]
    assert [(h["role"], h["read_only"]) for h in data["hosts"]] == [
        ("read-only primary", True),
        ("standby", True),
    ]
    assert codes(data) == ["no_writable_host"]
    assert "default_transaction_read_only" in data["warnings"][0]["advice"]
    code, data, _ = doctor(build(target_session_attrs="primary"))
    assert code == 1
    assert data["server"]["role"] == "read-only primary"
    assert codes(data) == ["no_writable_host", "read_only_primary_chosen"]


def test_two_writable_servers_are_a_split_brain(cluster: Cluster, doctor: Doctor) -> None:
    """Two independent primaries in one URL: split brain, ACTION; one server listed twice
    (two names) is not."""
    with EmbeddedPostgres(password=PASSWORD) as other:
        other.start()
        url = multi_host_url([cluster.primary, other])(target_session_attrs="read-write")
        code, data, _ = doctor(url)
    assert code == 1
    assert codes(data) == ["split_brain"]
    assert f":{cluster.primary.port} and " in data["warnings"][0]["message"]
    assert [h["role"] for h in data["hosts"]] == ["primary", "primary"]
    same = multi_host_url([cluster.primary, cluster.primary], hosts=["127.0.0.1", "localhost"])
    code, data, _ = doctor(same(target_session_attrs="read-write"))
    assert code == 0, data["warnings"]
    assert data["hosts"][1]["same_server_as"] == f"127.0.0.1:{cluster.primary.port}"


def test_a_lagging_standby_gets_advice(
    cluster: Cluster, doctor: Doctor, capsys: pytest.CaptureFixture[str]
) -> None:
    """Replay paused and a write on the primary: the standby's bytes and seconds behind,
    advice over --max-replica-lag, exit 0."""
    standby = cluster.replicas[0]
    cluster.pause_replay(standby)
    cluster.execute(cluster.primary, f"INSERT INTO {TABLE} (name) VALUES ('unseen')")
    time.sleep(0.3)
    url = multi_host_url([cluster.primary, standby])(target_session_attrs="read-write")
    code, data, _ = doctor(url, "--max-replica-lag", "0.2")
    assert code == 0
    lagging = data["hosts"][1]
    assert lagging["replay_paused"] is True
    assert lagging["bytes_behind"] > 0 and lagging["lag_seconds"] > 0.2
    assert codes(data) == ["host_lag"] and data["warnings"][0]["action"] is False
    assert text_report(capsys)[1].count("(paused)") == 1
