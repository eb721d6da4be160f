"""Hostile input to the bank's HTTP API: always a short 4xx, never a 500 or an echo."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from examples.bank.api import create_app
from examples.bank.guards import MAX_BODY_BYTES
from tests.examples.test_api import call, serving
from uow import Database

SHORT = 1_000  # bytes: a 422 says what is wrong, it does not copy the request back


@pytest.fixture
def api(bank_db: Database) -> Iterator[str]:
    """The bank API on empty tables, served over HTTP; yields its base URL."""
    with serving(create_app(bank_db)) as url:
        yield url


def send(api: str, path: str, body: bytes | Iterable[bytes], **headers: str) -> tuple[int, bytes]:
    """POST raw bytes (chunked when ``body`` is an iterable); returns the status and body."""
    parts = urlsplit(api)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    try:
        chunked = not isinstance(body, bytes)
        conn.request(
            "POST",
            path,
            body=body,
            headers={"Content-Type": "application/json", **headers},
            encode_chunked=chunked,
        )
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def post_json(api: str, path: str, text: str) -> tuple[int, bytes]:
    return send(api, path, text.encode())


def account(api: str) -> int:
    status, _, body = call("POST", f"{api}/accounts", {"owner": "ann", "initial": 100})
    assert status == 201, body
    return int(body["id"])


# JSON as a hostile client writes it: json.dumps escapes NUL and surrogates as \\u
# sequences and writes NaN/Infinity, which Python's json parser (and so FastAPI) accepts.
HOSTILE_ACCOUNTS = {
    "NUL in owner": {"owner": "a\x00b"},
    "lone surrogate in owner": {"owner": "a\ud800b"},
    "NaN opening amount": {"owner": "ann", "initial": float("nan")},
    "Infinity opening amount": {"owner": "ann", "initial": float("inf")},
    "owner of 10,000 characters": {"owner": "x" * 10_000},
    "60 KiB owner of surrogates": {"owner": "\udc80" * 10_000},
}


@pytest.mark.parametrize("payload", HOSTILE_ACCOUNTS.values(), ids=HOSTILE_ACCOUNTS.keys())
def test_hostile_new_account_is_a_short_422(api: str, payload: dict[str, Any]) -> None:
    """NUL, lone surrogates, NaN/Infinity, huge strings: 422, a short JSON body, no account."""
    status, body = post_json(api, "/accounts", json.dumps(payload))

    assert status == 422, body[:300]
    assert len(body) < SHORT, body[:300]
    (error,) = json.loads(body)["detail"]
    assert error["loc"][0] == "body"
    assert error["msg"]
    assert call("GET", f"{api}/accounts/1")[0] == 404


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("key", "k\x00"),
        ("key", "\udfff"),
        ("key", "k" * 10_000),
        ("amount", float("nan")),
        ("amount", float("-inf")),
        ("amount", float("inf")),
    ],
)
@pytest.mark.parametrize("path", ["/transfers", "/async/transfers", "deposit"])
def test_hostile_money_movement_is_a_short_422(
    api: str, path: str, field: str, value: object
) -> None:
    """Deposits and transfers, sync and async, refuse bad keys and non-finite amounts."""
    ann, bob = account(api), account(api)
    body: dict[str, Any] = {"amount": 5, "key": "k-1", field: value}
    if path == "deposit":
        path = f"/accounts/{ann}/deposits"
    else:
        body |= {"source_id": ann, "target_id": bob}

    status, reply = post_json(api, path, json.dumps(body))

    assert status == 422, reply[:300]
    assert len(reply) < SHORT
    (error,) = json.loads(reply)["detail"]
    assert error["loc"] == ["body", field]
    assert call("GET", f"{api}/accounts/{ann}")[2]["balance"] == 100


def test_a_422_shows_a_cut_and_escaped_input(api: str) -> None:
    """The input shown back is at most 100 characters, with surrogates as escapes."""
    status, body = post_json(api, "/accounts", json.dumps({"owner": "\ud800" + "x" * 5_000}))

    assert status == 422
    (error,) = json.loads(body)["detail"]
    assert error["input"] == ("\\ud800" + "x" * 94 + "...")
    assert error["msg"] == "Value error, must be valid Unicode (no lone surrogates)"


def test_a_body_over_the_limit_is_413(api: str) -> None:
    """A body over 64 KiB, with its length declared, is refused with 413."""
    payload = json.dumps({"owner": "x" * MAX_BODY_BYTES}).encode()

    status, body = send(api, "/accounts", payload)

    assert status == 413
    assert json.loads(body) == {"detail": "the request body is over the limit of 65536 bytes"}


def test_a_chunked_body_over_the_limit_is_413(api: str) -> None:
    """A chunked body (no Content-Length) is counted as it arrives: 413 past 64 KiB."""
    chunks = [b'{"owner": "', *[b"x" * 8192] * 16, b'"}']

    status, body = send(api, "/accounts", iter(chunks))

    assert status == 413
    assert b"over the limit" in body


def test_a_50_mb_owner_is_refused_before_it_is_read(api: str) -> None:
    """A declared 50 MB body gets 413 at once: the server does not read or echo it."""
    parts = urlsplit(api)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    try:
        conn.putrequest("POST", "/accounts")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(50 * 1024 * 1024))
        conn.endheaders(b'{"owner": "' + b"x" * 65_536)  # then stops sending
        response = conn.getresponse()
        status, body = response.status, response.read()
    finally:
        conn.close()

    assert status == 413
    assert len(body) < SHORT


def test_a_small_valid_body_still_works(api: str) -> None:
    """The limit leaves ordinary requests alone, chunked or not."""
    assert send(api, "/accounts", b'{"owner": "ann"}')[0] == 201
    assert send(api, "/accounts", iter([b'{"owner": ', b'"bob"}']))[0] == 201
