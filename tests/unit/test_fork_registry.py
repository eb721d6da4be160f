"""One fork registry: every part's reset runs in a forked child, and only there."""

from __future__ import annotations

import gc
import os

from uow._engine import fork


class _Resettable:
    def __init__(self, calls: list[str], name: str) -> None:
        self.calls = calls
        self.name = name

    def reset(self) -> None:
        self.calls.append(self.name)


def _in_child(check: object) -> int:
    """Fork; in the child, exit 0 if ``check()`` is true, else 1; return the child's status."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            code = 0 if check() else 1  # type: ignore[operator]
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_resets_run_in_the_child_in_registration_order_and_not_in_the_parent() -> None:
    """Registered resets run once in a forked child, in order; the parent runs none."""
    calls: list[str] = []
    first, second = _Resettable(calls, "first"), _Resettable(calls, "second")
    fork.at_fork_in_child(first.reset)
    fork.at_fork_in_child(lambda: calls.append("function"))
    fork.at_fork_in_child(second.reset)
    assert _in_child(lambda: calls == ["first", "function", "second"]) == 0
    assert calls == []


def test_a_collected_object_is_dropped_from_the_registry() -> None:
    """A bound method is held weakly: once its object is gone, nothing runs for it."""
    calls: list[str] = []
    gone = _Resettable(calls, "gone")
    fork.at_fork_in_child(gone.reset)
    del gone
    gc.collect()
    assert _in_child(lambda: calls == []) == 0
