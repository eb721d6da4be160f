"""The bank's HTTP API over real HTTP: uvicorn in a thread, urllib as the client."""

from __future__ import annotations

import json
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from sqlalchemy import make_url, select

from examples.bank.api import create_app
from tests.conftest import MakeDatabase
from tests.helpers import wait_for
from uow import Database, UnitOfWork

Reply = tuple[int, dict[str, str], Any]


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """Run ``app`` with uvicorn on a free 127.0.0.1 port; yields its base URL."""
    # Bound here, so the port is ours before the server starts: no race for a free port.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    # uvicorn installs signal handlers only in the main thread, so a thread is safe.
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started or not thread.is_alive(), what="uvicorn to start")
        assert server.started, "uvicorn stopped before serving"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
        assert not thread.is_alive(), "uvicorn did not stop"


def call(method: str, url: str, body: object = None) -> Reply:
    """Send one request; returns the status, the headers and the decoded JSON body."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(  # noqa: S310 - a test server on 127.0.0.1
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, dict(error.headers), json.loads(error.read())


@pytest.fixture
def api(bank_db: Database) -> Iterator[str]:
    """The bank API on empty tables, served over HTTP; yields its base URL."""
    with serving(create_app(bank_db)) as url:
        yield url


def open_account(api: str, owner: str, initial: int = 0) -> int:
    status, _, body = call("POST", f"{api}/accounts", {"owner": owner, "initial": initial})
    assert status == 201, body
    return int(body["id"])


def test_open_and_read_an_account(api: str) -> None:
    """POST /accounts answers 201 with the account; GET /accounts/{id} shows its balance."""
    status, _, body = call("POST", f"{api}/accounts", {"owner": "ann", "initial": 1_000})

    assert status == 201
    assert body == {"id": body["id"], "owner": "ann", "balance": 1_000}
    status, _, read = call("GET", f"{api}/accounts/{body['id']}")
    assert (status, read) == (200, body)


@pytest.mark.parametrize(
    "payload",
    [
        {"owner": "", "initial": 0},
        {"owner": "   "},
        {"owner": "ann", "initial": -1},
        {"owner": "ann", "initial": "5"},
        {"owner": "ann", "initial": 1.5},
        {"owner": "ann", "balance": 5},
        {},
    ],
)
def test_bad_new_account_is_422(api: str, payload: dict[str, Any]) -> None:
    """A blank owner, a negative or non-integer opening amount, or unknown fields: 422."""
    status, _, body = call("POST", f"{api}/accounts", payload)

    assert status == 422, body


def test_unknown_and_invalid_account_ids(api: str) -> None:
    """A missing account is 404 with a plain message; a non-positive or huge id is 422."""
    status, _, body = call("GET", f"{api}/accounts/999")
    assert (status, body) == (404, {"detail": "account 999 does not exist"})
    for bad in ("0", "-1", "abc", str(2**63)):
        assert call("GET", f"{api}/accounts/{bad}")[0] == 422, bad


def test_deposit_and_its_replay(api: str) -> None:
    """A deposit returns the new balance; its replay returns the same; a reused key is 409."""
    ann = open_account(api, "ann", 100)
    url = f"{api}/accounts/{ann}/deposits"

    first = call("POST", url, {"amount": 50, "key": "d-1"})
    again = call("POST", url, {"amount": 50, "key": "d-1"})
    status, _, conflict = call("POST", url, {"amount": 51, "key": "d-1"})

    assert first[0] == again[0] == 200
    assert first[2] == again[2] == {"account_id": ann, "balance": 150, "key": "d-1"}
    assert status == 409
    assert "d-1" in conflict["detail"]
    assert call("GET", f"{api}/accounts/{ann}")[2]["balance"] == 150
    assert call("POST", url, {"amount": 0, "key": "d-2"})[0] == 422
    assert call("POST", url, {"amount": 5, "key": ""})[0] == 422
    assert call("POST", f"{api}/accounts/999/deposits", {"amount": 5, "key": "d-3"})[0] == 404


def test_transfer_statuses(api: str) -> None:
    """201 for a new transfer, 200 for its replay, 409 for a conflict or too little money."""
    ann = open_account(api, "ann", 1_000)
    bob = open_account(api, "bob")
    order = {"source_id": ann, "target_id": bob, "amount": 400, "key": "t-1"}

    created = call("POST", f"{api}/transfers", order)
    replayed = call("POST", f"{api}/transfers", order)

    assert created[0] == 201
    assert created[2] == {**order, "id": created[2]["id"], "replayed": False}
    assert replayed[0] == 200
    assert replayed[2] == {**created[2], "replayed": True}
    assert call("POST", f"{api}/transfers", {**order, "amount": 401})[0] == 409
    status, _, body = call("POST", f"{api}/transfers", {**order, "amount": 601, "key": "t-2"})
    assert status == 409
    assert "nothing was transferred" in body["detail"]
    assert call("POST", f"{api}/transfers", {**order, "target_id": ann, "key": "t-3"})[0] == 422
    assert call("POST", f"{api}/transfers", {**order, "target_id": 999, "key": "t-4"})[0] == 404
    assert call("POST", f"{api}/transfers", {**order, "amount": -1, "key": "t-5"})[0] == 422
    assert call("GET", f"{api}/accounts/{ann}")[2]["balance"] == 600
    assert call("GET", f"{api}/accounts/{bob}")[2]["balance"] == 400


def test_async_endpoints_follow_the_same_rules(api: str) -> None:
    """The async path (AsyncUnitOfWork) answers like the sync one: 201, 200, 409, 404."""
    ann = open_account(api, "ann", 1_000)
    bob = open_account(api, "bob")
    order = {"source_id": ann, "target_id": bob, "amount": 400, "key": "a-1"}
    created = call("POST", f"{api}/async/transfers", order)
    assert created[0] == 201
    assert call("POST", f"{api}/async/transfers", order)[0] == 200  # replayed, not applied
    assert call("POST", f"{api}/transfers", order)[0] == 200  # the sync path sees the same key
    too_much = {**order, "amount": 601, "key": "a-2"}
    assert call("POST", f"{api}/async/transfers", too_much)[0] == 409
    assert (
        call("POST", f"{api}/async/transfers", {**order, "target_id": 999, "key": "a-3"})[0] == 404
    )
    assert call("GET", f"{api}/async/accounts/{ann}")[2]["balance"] == 600
    assert call("GET", f"{api}/async/accounts/999")[0] == 404
    assert call("GET", f"{api}/accounts/{bob}")[2]["balance"] == 400


def test_statement(api: str) -> None:
    """GET /accounts/{id}/statement lists the movements, oldest first, with the balance."""
    ann = open_account(api, "ann", 1_000)
    bob = open_account(api, "bob")
    call("POST", f"{api}/transfers", {"source_id": ann, "target_id": bob, "amount": 1, "key": "t"})

    status, _, body = call("GET", f"{api}/accounts/{ann}/statement")

    assert status == 200
    assert (body["account_id"], body["owner"], body["balance"]) == (ann, "ann", 999)
    assert [(x["kind"], x["amount"], x["counterparty_id"]) for x in body["lines"]] == [
        ("deposit", 1_000, None),
        ("transfer out", -1, bob),
    ]
    assert all(x["created_at"] for x in body["lines"])
    assert call("GET", f"{api}/accounts/999/statement")[0] == 404


def test_health(api: str) -> None:
    """GET /health is 200 with the pool's size, use and queue."""
    status, _, body = call("GET", f"{api}/health")

    assert status == 200
    assert body["status"] == "ok"
    assert set(body["pool"]) == {"size", "max_overflow", "checked_out", "idle", "waiting"}
    assert body["pool"]["size"] == 5


def test_exhausted_pool_is_503_with_retry_after(bank_url: str, make_database: MakeDatabase) -> None:
    """With the only connection held elsewhere, requests get 503 + Retry-After, not a hang."""
    database = make_database(url=bank_url, pool_size=1, pool_timeout=0.2)
    holding, release = threading.Event(), threading.Event()

    def hold_the_only_connection() -> None:
        with UnitOfWork(database) as unit:
            unit.session.execute(select(1))  # the connection is checked out from here on
            holding.set()
            release.wait(timeout=30)

    holder = threading.Thread(target=hold_the_only_connection)
    with serving(create_app(database)) as api:
        holder.start()
        try:
            assert holding.wait(timeout=10)
            status, headers, body = call("GET", f"{api}/accounts/1")
            health = call("GET", f"{api}/health")
        finally:
            release.set()
            holder.join()
        after = call("GET", f"{api}/health")

    assert status == 503
    assert headers["retry-after"] == "1"
    assert body == {"detail": "the service is overloaded; retry shortly"}
    assert health[0] == 503
    assert health[1]["retry-after"] == "1"
    assert health[2]["status"] == "overloaded"
    assert health[2]["pool"]["checked_out"] == 1
    assert after[0] == 200
    assert database.status().checked_out == 0


def test_unreachable_database_is_503_without_details(
    bank_url: str, make_database: MakeDatabase
) -> None:
    """With the server unreachable, requests and /health are 503 and never show the URL."""
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    url = make_url(bank_url).set(host="127.0.0.1", port=port)
    database = make_database(url=url.render_as_string(hide_password=False), connect_timeout=1)

    with serving(create_app(database)) as api:
        replies = [
            call("GET", f"{api}/accounts/1"),
            call("POST", f"{api}/accounts", {"owner": "ann"}),
            call("GET", f"{api}/health"),
        ]

    for status, _, body in replies:
        assert status == 503, body
        text = json.dumps(body)
        for secret in (str(port), "127.0.0.1", str(url.database), "postgresql"):
            assert secret not in text
    assert replies[0][2] == {"detail": "the database is unavailable; retry later"}
    assert replies[2][2]["status"] == "unavailable"
