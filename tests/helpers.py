"""Helpers the whole suite shares: waiting for a condition, Ctrl-C, any value at all.

Asyncio code waits with ``await asyncio.to_thread(wait_for, ...)``, so the loop keeps
running while the condition is polled.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from hypothesis import strategies as st

__all__ = ["any_value", "ctrl_c_raises", "wait_for"]

T = TypeVar("T")


def wait_for(check: Callable[[], T], *, timeout: float = 10.0, what: str) -> T:
    """Poll ``check`` every 10 ms until it returns something truthy, and return that.

    Fails with an AssertionError naming ``what`` after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)
    return result


@contextmanager
def ctrl_c_raises() -> Iterator[None]:
    """Within the block, SIGINT raises KeyboardInterrupt, as in a terminal.

    A process started in the background (``nohup ... &``, CI runners) inherits SIGINT
    ignored, and Python then installs no handler: a test that sends itself Ctrl-C must
    install the default one.
    """
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def any_value(*more: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Values of every kind a caller may pass by mistake (huge, NaN, text...), and ``more``."""
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.integers(min_value=10**300, max_value=10**500),
        st.floats(),
        st.decimals(),
        st.fractions(),
        st.text(),
        *more,
    )
