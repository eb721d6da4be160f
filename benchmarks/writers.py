"""Writer load for failover runs: N writers, each write a unique key in its own transaction.

Shared by ``benchmarks/failover.py`` and ``tests/ha``. Three stacks write the same rows:

- ``uow``: ``uow.run_transaction(fn, wait=WAIT)`` from threads;
- ``uow-async``: ``uow.run_transaction_async(fn, wait=WAIT)`` from tasks on one event
  loop (in a thread of its own);
- ``sqlalchemy``: plain SQLAlchemy, ``create_engine(url, pool_pre_ping=True)`` and a
  ``Session`` per write, committed; an error sleeps 10 ms (as a web client would before
  its next request) and the writer goes on with the next key.

`Timeouts` gives both kinds of stack the same limits: uow through its settings, plain
SQLAlchemy through libpq's ``connect_timeout`` and ``options``.

Every write is recorded (key, start, end, acknowledged or the error's type), so that
after the event `Summary` tells the longest gap without an acknowledged write, the
errors that reached callers, the acknowledged keys missing from the table, and the time
from the fault's end to full throughput.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import psycopg
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session

import uow

__all__ = [
    "STACKS",
    "TABLE",
    "WAIT",
    "Summary",
    "Timeouts",
    "Write",
    "WriterLoad",
    "create_table",
    "stored_keys",
    "summarise",
]

TABLE = "ha_writes"
WAIT = 30.0  # run_transaction(wait=...) of the uow stacks, in seconds
STACKS = ("uow", "uow-async", "sqlalchemy")
FULL = 0.8  # share of the pre-fault rate that counts as full throughput
WINDOW = 1.0  # seconds: the throughput window
_INSERT = text(f"INSERT INTO {TABLE} (run, key) VALUES (:run, :key)")


def create_table(dsn: str) -> None:
    """Create the writes table (``run text, key bigint``, primary key both) if missing."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {TABLE} "
            "(run text NOT NULL, key bigint NOT NULL, PRIMARY KEY (run, key))"
        )


def stored_keys(dsn: str, run: str) -> set[int]:
    """The keys of run ``run`` in the table, read from the server of ``dsn``."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(f"SELECT key FROM {TABLE} WHERE run = %s", (run,)).fetchall()
    return {key for (key,) in rows}


@dataclass(frozen=True)
class Write:
    """One write as its caller saw it: ``error`` is None when it was acknowledged."""

    writer: int
    key: int
    start: float
    end: float
    error: str | None


@dataclass(frozen=True)
class Timeouts:
    """Limits set alike on every stack (seconds; None leaves the stack's own default).

    Attributes:
        statement_timeout: uow's ``statement_timeout`` setting (which also sets its
            watchdog and ``tcp_user_timeout``); for plain SQLAlchemy
            ``options=-c statement_timeout=...``.
        connect_timeout: uow's ``connect_timeout``; libpq's ``connect_timeout`` for plain
            SQLAlchemy (whole seconds).
    """

    statement_timeout: float | None = None
    connect_timeout: float | None = None

    def uow_settings(self) -> dict[str, Any]:
        """The uow settings these limits stand for."""
        return {
            name: value
            for name, value in (
                ("statement_timeout", self.statement_timeout),
                ("connect_timeout", self.connect_timeout),
            )
            if value is not None
        }

    def connect_args(self) -> dict[str, str | int]:
        """libpq parameters for ``create_engine(connect_args=...)``."""
        args: dict[str, str | int] = {}
        if self.statement_timeout is not None:
            args["options"] = f"-c statement_timeout={round(self.statement_timeout * 1000)}"
        if self.connect_timeout is not None:
            args["connect_timeout"] = round(self.connect_timeout)
        return args


@dataclass
class Summary:
    """What the callers saw around one fault (times in seconds, monotonic clock).

    Attributes:
        acknowledged: Writes acknowledged to their caller.
        longest_call: Longest time one caller was blocked in one finished call (one
            ``run_transaction`` call for uow, one write attempt for plain SQLAlchemy).
        longest_gap: Longest time without an acknowledged write, over the whole run.
        outage: The longest gap between acknowledged writes that ended after the fault
            began: from the last write the old server acknowledged to the first one after.
        back_after_end: From the fault's end to the end of `outage` (negative: writes
            were back before the fault was declared over); None if no write came back.
        errors: Errors that reached callers, by type.
        most_errors_per_writer: The most errors any one writer saw, by type.
        lost: Acknowledged keys missing from the table.
        to_full: From the fault's end to the start of the first 1 s window whose rate
            is at least 80% of the rate before the fault; None if none was.
        rate_before: Acknowledged writes per second before the fault.
    """

    acknowledged: int
    longest_call: float
    longest_gap: float
    outage: float
    back_after_end: float | None
    errors: dict[str, int]
    most_errors_per_writer: dict[str, int]
    lost: int
    to_full: float | None
    rate_before: float


class WriterLoad:
    """``writers`` writers inserting unique keys of run ``run`` through one stack."""

    def __init__(
        self,
        stack: str,
        url: str,
        run: str,
        *,
        writers: int = 8,
        timeouts: Timeouts = Timeouts(),
    ) -> None:
        if stack not in STACKS:
            raise ValueError(f"stack must be one of {', '.join(STACKS)}, got {stack!r}")
        self.stack, self.url, self.run, self.writers = stack, url, run, writers
        self.timeouts = timeouts
        self.writes: list[Write] = []
        self._calls: dict[int, float] = {}  # writer -> start of the call it is in
        self._keys = itertools.count(1)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.database: uow.Database | None = None
        self.engine: Engine | None = None
        self.crashes: list[BaseException] = []

    def __enter__(self) -> WriterLoad:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
        self.close()

    def start(self) -> WriterLoad:
        """Open the pool and start the writers."""
        if self.stack == "sqlalchemy":
            self.engine = create_engine(
                self.url,
                pool_pre_ping=True,
                pool_size=self.writers,
                max_overflow=0,
                connect_args=self.timeouts.connect_args(),
            )
            targets: list[Callable[[int], None]] = [self._plain] * self.writers
        else:
            self.database = uow.Database(
                uow.Settings(
                    url=self.url,
                    pool_size=self.writers,
                    application_name="ha-writers",
                    **self.timeouts.uow_settings(),
                )
            )
            targets = [self._uow] * self.writers if self.stack == "uow" else [self._async]
        for index, target in enumerate(targets):
            # A daemon: a writer a benchmark gave up on (still blocked on a hung server)
            # must not keep the interpreter from exiting.
            thread = threading.Thread(
                target=self._guard(target), args=(index,), name=f"writer-{index}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self, timeout: float = WAIT + 30, *, abandon: bool = False) -> dict[int, float]:
        """Stop the writers after their current write; raise if one crashed.

        A writer still in a call ``timeout`` seconds later is an error, unless
        ``abandon``: then it is left running (a daemon thread) and the calls still in
        progress are returned, writer to start time. Without ``abandon``: an empty dict.
        """
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(deadline - time.monotonic(), 0))
        if self.crashes:
            raise RuntimeError(f"a writer crashed: {self.crashes[0]!r}") from self.crashes[0]
        if any(thread.is_alive() for thread in self._threads):
            if not abandon:
                hung = [thread.name for thread in self._threads if thread.is_alive()]
                raise RuntimeError(f"writers {hung} did not stop within {timeout:g} s")
            return self.in_calls()
        return {}

    def in_calls(self, started_before: float = math.inf) -> dict[int, float]:
        """The calls in progress that started before ``started_before``: writer to start."""
        with self._lock:
            return {w: start for w, start in self._calls.items() if start < started_before}

    def close(self) -> None:
        """Dispose of the pool."""
        if self.database is not None:
            self.database.dispose()
        if self.engine is not None:
            self.engine.dispose()

    def acknowledged(self) -> set[int]:
        """Keys of the acknowledged writes so far."""
        with self._lock:
            return {write.key for write in self.writes if write.error is None}

    # -- the stacks ---------------------------------------------------------------------

    def _guard(self, target: Callable[[int], None]) -> Callable[[int], None]:
        def run(index: int) -> None:
            try:
                target(index)
            except BaseException as exc:  # noqa: BLE001 (reported by stop())
                self.crashes.append(exc)

        return run

    def _begin(self, writer: int) -> float:
        start = time.monotonic()
        with self._lock:
            self._calls[writer] = start
        return start

    def _record(self, writer: int, key: int, start: float, error: BaseException | None) -> None:
        kind = None if error is None else type(error).__name__
        write = Write(writer, key, start, time.monotonic(), kind)
        with self._lock:
            self.writes.append(write)
            del self._calls[writer]

    def _uow(self, writer: int) -> None:
        while not self._stop.is_set():
            key = next(self._keys)

            def insert(unit: uow.UnitOfWork, key: int = key) -> None:
                unit.session.execute(_INSERT, {"run": self.run, "key": key})

            start = self._begin(writer)
            try:
                uow.run_transaction(insert, database=self.database, wait=WAIT)
            except Exception as exc:  # noqa: BLE001 (recorded: it reached the caller)
                self._record(writer, key, start, exc)
            else:
                self._record(writer, key, start, None)

    def _async(self, _: int) -> None:
        async def write_loop(writer: int) -> None:
            while not self._stop.is_set():
                key = next(self._keys)

                async def insert(unit: uow.AsyncUnitOfWork, key: int = key) -> None:
                    await unit.session.execute(_INSERT, {"run": self.run, "key": key})

                start = self._begin(writer)
                try:
                    await uow.run_transaction_async(insert, database=self.database, wait=WAIT)
                except Exception as exc:  # noqa: BLE001 (recorded: it reached the caller)
                    self._record(writer, key, start, exc)
                else:
                    self._record(writer, key, start, None)

        async def main() -> None:
            try:
                await asyncio.gather(*(write_loop(index) for index in range(self.writers)))
            finally:
                assert self.database is not None
                await self.database.dispose_async()

        asyncio.run(main())

    def _plain(self, writer: int) -> None:
        assert self.engine is not None
        while not self._stop.is_set():
            key = next(self._keys)
            start = self._begin(writer)
            try:
                with Session(self.engine) as session:
                    session.execute(_INSERT, {"run": self.run, "key": key})
                    session.commit()
            except Exception as exc:  # noqa: BLE001 (recorded: it reached the caller)
                self._record(writer, key, start, exc)
                time.sleep(0.01)
            else:
                self._record(writer, key, start, None)


def summarise(
    writes: Iterable[Write],
    stored: set[int],
    *,
    fault_start: float,
    fault_end: float,
    until: float | None = None,
) -> Summary:
    """Summarise the writes of one run around a fault from ``fault_start`` to ``fault_end``.

    ``until`` is when the run ended (the writers were stopped or given up on; default:
    the last write's end): a gap still open then counts up to it. If no write was
    acknowledged after the fault began, `Summary.back_after_end` is None.

    Raises:
        ValueError: No write was made at all.
    """
    writes = sorted(writes, key=lambda write: write.end)
    if not writes:
        raise ValueError("no write was made")
    acks = [write.end for write in writes if write.error is None]
    end = max(writes[-1].end, until or -math.inf)
    edges = [writes[0].start, *acks, end]
    longest_gap = max(later - earlier for earlier, later in itertools.pairwise(edges))
    back: float | None
    outage, back = max(
        (
            (later - earlier, later)
            for earlier, later in itertools.pairwise([writes[0].start, *acks])
            if later > fault_start
        ),
        # Nothing came back: the outage is still open at the run's end.
        default=(end - max([writes[0].start, *acks]), None),
    )
    first_start = writes[0].start
    before = [moment for moment in acks if first_start + 0.5 <= moment < fault_start]
    rate_before = len(before) / max(fault_start - first_start - 0.5, 1e-9)
    per_writer: Counter[tuple[int, str]] = Counter(
        (write.writer, write.error) for write in writes if write.error is not None
    )
    most: dict[str, int] = {}
    for (_, kind), count in per_writer.items():
        most[kind] = max(most.get(kind, 0), count)
    return Summary(
        acknowledged=len(acks),
        longest_call=max(write.end - write.start for write in writes),
        longest_gap=longest_gap,
        outage=outage,
        back_after_end=None if back is None else back - fault_end,
        errors=dict(Counter(write.error for write in writes if write.error is not None)),
        most_errors_per_writer=most,
        lost=len({write.key for write in writes if write.error is None} - stored),
        to_full=_to_full(
            [moment for moment in acks if moment >= fault_end], fault_end, rate_before
        ),
        rate_before=rate_before,
    )


def _to_full(after: list[float], start: float, rate: float) -> float | None:
    """Seconds from ``start`` to the first ``WINDOW`` (sliding by 0.1 s) at ``FULL`` rate."""
    if rate <= 0 or not after:
        return None
    end = after[-1]
    offset = 0.0
    while start + offset + WINDOW <= end:
        low, high = start + offset, start + offset + WINDOW
        if sum(1 for moment in after if low <= moment < high) >= FULL * rate * WINDOW:
            return offset
        offset += 0.1
    return None


def any_of(values: dict[str, Any]) -> str:
    """``Type: n, Type: n`` or ``none``."""
    return ", ".join(f"{name}: {count}" for name, count in sorted(values.items())) or "none"
