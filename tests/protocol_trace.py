"""Counting round trips: libpq's protocol trace (PQtrace) of every connection an engine opens.

Every round trip ends with the server's ReadyForQuery message. The ``trace`` fixture
(tests/conftest.py) starts one and closes it after the test.
"""

from __future__ import annotations

import tempfile
from typing import IO, Any

import psycopg
from sqlalchemy import Engine, event

_SENT = "F\t"


def _statement(line: str) -> str:
    """The SQL of a frontend Query or Parse message, as PQtrace prints it."""
    _, _, kind, rest = [*line.split("\t", 3), ""][:4]
    if kind == "Query":
        return rest.strip(' "')
    if kind == "Parse":
        return rest.split('"', 4)[3]  # Parse "name" "sql" ...
    return ""


class Trace:
    """Records the protocol messages of every connection an engine opens."""

    def __init__(self, engine: Engine) -> None:
        self._file: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        self._traced: list[Any] = []
        event.listen(engine, "connect", self._on_connect)

    def _on_connect(self, dbapi_connection: Any, record: Any) -> None:
        self._traced.append(dbapi_connection.pgconn)
        dbapi_connection.pgconn.trace(self._file.fileno())
        dbapi_connection.pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS)

    def take(self) -> tuple[int, list[str]]:
        """Round trips and queries sent since the last call."""
        self._file.seek(0)
        lines = self._file.read().decode().splitlines()
        self._file.seek(0)
        self._file.truncate()
        sent = (_statement(line) for line in lines if line.startswith(_SENT))
        queries = [statement for statement in sent if statement]
        return sum("ReadyForQuery" in line for line in lines), queries

    def close(self) -> None:
        for pgconn in self._traced:
            if not pgconn.status:  # CONNECTION_OK: still open, stop writing to our file
                pgconn.untrace()
        self._file.close()
