"""Runs one fault scenario with the sync or the async unit of work.

A scenario is written once, as plain code. The test's own thread injects the faults,
waits and checks; its workers open units of work through a :class:`Driver`:

- ``sync``: each worker is a thread, each unit a :class:`uow.UnitOfWork`;
- ``async``: each worker is a task on one event loop (in a thread of its own), each
  unit an :class:`uow.AsyncUnitOfWork`. The worker's code runs in SQLAlchemy's
  greenlet bridge (``greenlet_spawn``, on which AsyncSession itself is built), and
  each step awaits, in the worker's task, the coroutine that ``async with`` and
  ``await`` would: ``__aenter__``, ``session.execute``, ``flush``, ``__aexit__``.

So both run the same units, with the same concurrency, against the same faults.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from types import TracebackType
from typing import Any, TypeVar

from sqlalchemy import Result, text
from sqlalchemy.util import await_only, greenlet_spawn

from uow import AsyncUnitOfWork, Database, UnitOfWork

__all__ = ["Driver", "Unit", "Workers"]

T = TypeVar("T")
Worker = Callable[[int], object]


class _Awaited(AbstractContextManager[T]):
    """An async context manager entered and left as ``async with`` does, from a greenlet."""

    def __init__(self, manager: AbstractAsyncContextManager[T]) -> None:
        self._manager = manager

    def __enter__(self) -> T:
        return await_only(self._manager.__aenter__())

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        return await_only(self._manager.__aexit__(kind, exc, tb))


class Unit:
    """A unit of work of either kind, entered and used from a worker with ``with``.

    Its ``__enter__`` calls the unit's own ``__enter__`` (uow skips frames of that name
    when it looks for the caller, so a sync unit sees the worker's code as its caller
    and nested units join as without the driver), or awaits ``__aenter__``.
    """

    def __init__(self, unit: UnitOfWork | AsyncUnitOfWork) -> None:
        self.unit = unit

    def __enter__(self) -> Unit:
        if isinstance(self.unit, AsyncUnitOfWork):
            await_only(self.unit.__aenter__())
        else:
            self.unit.__enter__()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if isinstance(self.unit, AsyncUnitOfWork):
            await_only(self.unit.__aexit__(kind, exc, tb))
        else:
            self.unit.__exit__(kind, exc, tb)

    def _wait(self, step: Awaitable[T] | T) -> T:
        if isinstance(self.unit, AsyncUnitOfWork):
            return await_only(step)  # type: ignore[arg-type]
        return step  # type: ignore[return-value]

    def execute(self, statement: Any, params: dict[str, Any] | None = None) -> Result[Any]:
        """Run a statement (a string is taken as SQL text) and return its buffered result."""
        if isinstance(statement, str):
            statement = text(statement)
        return self._wait(self.unit.session.execute(statement, params))

    def add(self, obj: object) -> None:
        self.unit.session.add(obj)

    def flush(self) -> None:
        self._wait(self.unit.flush())

    def get_for_update(self, model: type[T], ident: Any) -> T | None:
        """The repository's ``get_for_update``: the row, locked until the unit ends."""
        return self._wait(self.unit.repository(model).get_for_update(ident))

    def backend_pid(self) -> int:
        return int(self.execute("SELECT pg_backend_pid()").scalar_one())

    def savepoint(self) -> AbstractContextManager[None]:
        if isinstance(self.unit, AsyncUnitOfWork):
            return _Awaited(self.unit.savepoint())
        return self.unit.savepoint()


class Workers:
    """Workers a driver started; :meth:`join` fails if one raised or is still running."""

    def __init__(self, count: int, timeout: float, what: str) -> None:
        self.count = count
        self.timeout = timeout
        self.what = what
        self.errors: list[tuple[int, BaseException]] = []
        self._deadline = time.monotonic() + timeout

    def _run(self, worker: Worker, i: int) -> None:
        try:
            worker(i)
        except BaseException as exc:
            self.errors.append((i, exc))

    def _wait(self, seconds: float) -> str:
        """Wait up to ``seconds``; return how many still run and where ('' if none)."""
        raise NotImplementedError

    def join(self) -> None:
        if hung := self._wait(max(0.0, self._deadline - time.monotonic())):
            raise AssertionError(f"{hung} of {self.count} {self.what} after {self.timeout}s")
        if self.errors:
            i, first = self.errors[0]
            raise AssertionError(
                f"{len(self.errors)} of {self.count} {self.what} raised; {i}: {first!r}"
            ) from first


class _Threads(Workers):
    def __init__(self, count: int, worker: Worker, timeout: float) -> None:
        super().__init__(count, timeout, "threads")
        self._threads = [
            threading.Thread(target=self._run, args=(worker, i), name=f"fault-{i}", daemon=True)
            for i in range(count)
        ]
        for thread in self._threads:
            thread.start()

    def _wait(self, seconds: float) -> str:
        deadline = time.monotonic() + seconds
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        hung = [thread for thread in self._threads if thread.is_alive()]
        if not hung:
            return ""
        frame = sys._current_frames().get(hung[0].ident or 0)
        stack = "".join(traceback.format_stack(frame)) if frame is not None else "(gone)"
        return f"{len(hung)} still running; {hung[0].name} is at:\n{stack}\n"


class _Tasks(Workers):
    def __init__(
        self, count: int, worker: Worker, timeout: float, loop: asyncio.AbstractEventLoop
    ) -> None:
        super().__init__(count, timeout, "tasks")
        self._futures = [
            asyncio.run_coroutine_threadsafe(greenlet_spawn(self._run, worker, i), loop)
            for i in range(count)
        ]

    def _wait(self, seconds: float) -> str:
        _, pending = concurrent.futures.wait(self._futures, timeout=seconds)
        for future in pending:
            future.cancel()
        return f"{len(pending)} still running" if pending else ""


class Driver:
    """Opens units of work and runs workers, either sync (threads) or async (tasks)."""

    def __init__(self, asynchronous: bool) -> None:
        self.asynchronous = asynchronous
        self.name = "async" if asynchronous else "sync"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return self.name

    # -- inside a worker ----------------------------------------------------------------

    def unit(self, db: Database, **options: Any) -> Unit:
        """``with UnitOfWork(db)``, or ``async with AsyncUnitOfWork(db)``, in a worker."""
        if self.asynchronous:
            return Unit(AsyncUnitOfWork(db, **options))
        return Unit(UnitOfWork(db, **options))

    def call(self, sync: Callable[[], T], asynchronous: Callable[[], Awaitable[T]]) -> T:
        """``sync()``, or ``await asynchronous()``, in a worker."""
        return await_only(asynchronous()) if self.asynchronous else sync()

    def sleep(self, seconds: float) -> None:
        """Pause the worker (and only the worker) for ``seconds``."""
        self.call(lambda: time.sleep(seconds), lambda: asyncio.sleep(seconds))

    def barrier(self, parties: int) -> Callable[[], object]:
        """A barrier for ``parties`` workers; call what it returns to wait at it."""
        if self.asynchronous:
            meet = asyncio.Barrier(parties)
            return lambda: await_only(asyncio.wait_for(meet.wait(), 30))
        barrier = threading.Barrier(parties)
        return lambda: barrier.wait(30)

    # -- from the test's thread ----------------------------------------------------------

    def start(self, count: int, worker: Worker, *, timeout: float) -> Workers:
        """Start ``worker(i)`` for i in range(count), at once; join() them later."""
        if not self.asynchronous:
            return _Threads(count, worker, timeout)
        return _Tasks(count, worker, timeout, self._event_loop())

    def run(self, count: int, worker: Worker, *, timeout: float) -> None:
        """Run ``worker(i)`` for i in range(count) at once; fail on an error or a hang."""
        self.start(count, worker, timeout=timeout).join()

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(
                target=self._loop.run_forever, name="fault-loop", daemon=True
            )
            self._thread.start()
        return self._loop

    def close(self, databases: list[Database]) -> None:
        """Close the asyncio pools in the loop that opened them, then stop the loop."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        async def dispose() -> None:
            for db in databases:
                await db.dispose_async()
            await loop.shutdown_asyncgens()

        try:
            asyncio.run_coroutine_threadsafe(dispose(), loop).result(30)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()
            self._loop = self._thread = None
