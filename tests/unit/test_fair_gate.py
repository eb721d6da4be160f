"""The FIFO gate in front of pool checkout, without a database."""

from __future__ import annotations

import threading
import time

from uow._engine.fair_gate import _FairGate, _Waiter


def test_permits_are_granted_in_arrival_order() -> None:
    """Waiters get permits strictly in the order they arrived."""
    gate = _FairGate(1)
    assert gate.acquire(1)
    order: list[int] = []

    def wait(i: int) -> None:
        assert gate.acquire(5)
        order.append(i)
        gate.release()

    threads = []
    for i in range(10):
        thread = threading.Thread(target=wait, args=(i,))
        thread.start()
        threads.append(thread)
        while gate.waiting < i + 1:  # make arrival order certain
            time.sleep(0.001)
    gate.release()
    for thread in threads:
        thread.join()
    assert order == list(range(10))


def test_a_releasing_thread_cannot_barge_past_waiters() -> None:
    """A thread that releases and immediately asks again queues behind the waiters."""
    gate = _FairGate(1)
    assert gate.acquire(1)
    got: list[str] = []
    waiter = threading.Thread(target=lambda: got.append("waiter") if gate.acquire(5) else None)
    waiter.start()
    while gate.waiting < 1:
        time.sleep(0.001)
    gate.release()
    assert not gate.acquire(0.05)  # the permit went to the waiter
    waiter.join()
    assert got == ["waiter"]


def test_timeout_leaves_the_queue() -> None:
    """A waiter that times out leaves the queue, and the permit later goes to the next one."""
    gate = _FairGate(1)
    assert gate.acquire(1)
    started = time.monotonic()
    assert not gate.acquire(0.1)
    assert time.monotonic() - started >= 0.09
    assert gate.waiting == 0
    gate.release()
    assert gate.acquire(0)


def test_interrupted_waiter_passes_a_granted_permit_on() -> None:
    """A waiter that gets a permit but is interrupted hands it to the next in line."""
    gate = _FairGate(1)
    assert gate.acquire(1)
    lost = _Waiter()
    gate._waiters.append(lost)
    gate.release()  # granted to `lost`
    assert lost.granted
    assert gate._abandon(lost)  # it had the permit when it gave up
    gate.release()  # ...so it passes it on
    assert gate.acquire(0)
