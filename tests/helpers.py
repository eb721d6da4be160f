"""Helpers the whole suite shares: waiting, Ctrl-C, any value at all, running a command.

Asyncio code waits with ``await asyncio.to_thread(wait_for, ...)``, so the loop keeps
running while the condition is polled.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from hypothesis import strategies as st

__all__ = ["ROOT", "any_value", "ctrl_c_raises", "run_python", "wait_for"]

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[1]
"""The project's root: the working directory of the commands the tests run."""


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


def run_python(
    *args: str, drop: tuple[str, ...] = ("UOW_", "DATABASE_"), timeout: float = 120, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run this interpreter with ``args`` in the project root; return its text output.

    Its environment is this process's without the variables whose names start with
    ``drop`` (so the developer's own settings do not leak in), plus ``env``.
    """
    return subprocess.run(  # noqa: S603 - our own interpreter, arguments from the tests
        [sys.executable, *args],
        cwd=ROOT,
        env=_environment(drop, env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_python(
    *args: str, drop: tuple[str, ...] = ("UOW_", "DATABASE_"), **env: str
) -> subprocess.Popen[str]:
    """:func:`run_python`, started in the background with its stdout and stderr piped."""
    return subprocess.Popen(  # noqa: S603 - our own interpreter, arguments from the tests
        [sys.executable, *args],
        cwd=ROOT,
        env=_environment(drop, env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _environment(drop: tuple[str, ...], env: dict[str, str]) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    return {**environ, **env}
