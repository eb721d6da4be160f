"""What stands between hostile input and the bank: text rules, short 422s, a body limit.

* :data:`Text` refuses what PostgreSQL or JSON cannot hold: NUL characters (``text``
  cannot contain them) and lone surrogates (not Unicode; they cannot be encoded).
* :func:`validation_error` answers a request that fails validation with a short 422:
  the field, the reason and at most :data:`ECHO_LIMIT` characters of the input, escaped
  so that any input, even ``NaN`` or a lone surrogate, encodes as JSON.
* :class:`BodyLimit` answers 413 to a body over :data:`MAX_BODY_BYTES`, from its
  ``Content-Length`` before reading it, and by counting the bytes of a chunked one.
"""

from __future__ import annotations

import json
import math
from typing import Annotated

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import AfterValidator
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .services import check_text

__all__ = ["ECHO_LIMIT", "MAX_BODY_BYTES", "BodyLimit", "Text", "validation_error"]

MAX_BODY_BYTES = 64 * 1024  # the largest valid request is well under 1 KiB
ECHO_LIMIT = 100  # characters of a bad input a 422 shows back


Text = Annotated[str, AfterValidator(check_text)]
"""A string PostgreSQL can store; length limits go on the field (checked first)."""


def shorten(value: object, limit: int = ECHO_LIMIT) -> object:
    """``value`` as JSON can carry it: numbers and short strings as they are, else cut."""
    if value is None or (isinstance(value, bool | int) and abs(value) < 10**limit):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    text = value if isinstance(value, str) else json.dumps(value, default=repr)[: limit * 4]
    # A lone surrogate cannot be encoded as UTF-8: show it as its escape.
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[:limit] + "..."


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    """A short 422: each error's field path, reason and a cut, encodable copy of the input."""
    assert isinstance(exc, RequestValidationError)
    errors = [
        {
            "loc": [shorten(part) for part in error.get("loc", ())],
            "msg": shorten(str(error.get("msg", "invalid")), 200),
            "type": str(error.get("type", "value_error")),
            **({"input": shorten(error["input"])} if "input" in error else {}),
        }
        for error in exc.errors()[:10]  # a body can fail on every field: ten say enough
    ]
    return JSONResponse({"detail": errors}, status_code=422)


class _BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is over the limit of {limit} bytes")


class BodyLimit:
    """ASGI middleware: 413 for a request body over ``max_bytes``, declared or streamed."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.max_bytes:
            # Answered before a byte of the body is read.
            await self._refuse(send)
            return
        received, started = 0, False

        async def counting() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                # An HTTPException: FastAPI re-raises it from its body reader as it is.
                raise _BodyTooLarge(self.max_bytes)
            return message

        async def sending(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting, sending)
        except _BodyTooLarge:
            if started:
                raise
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps({"detail": str(_BodyTooLarge(self.max_bytes).detail)}).encode()
        headers: list[tuple[bytes, bytes]] = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),  # the unread rest of the body is not ours to drain
        ]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})
