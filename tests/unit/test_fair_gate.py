"""The FIFO gate in front of pool checkout, without a database."""

from __future__ import annotations

import asyncio
import contextlib
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


def test_tasks_are_granted_permits_in_arrival_order() -> None:
    """Asyncio waiters get permits strictly in the order they arrived."""

    async def main() -> list[int]:
        gate = _FairGate(1)
        assert gate.try_acquire()
        order: list[int] = []

        async def wait(i: int) -> None:
            assert await gate.acquire_async(5)
            order.append(i)
            await asyncio.sleep(0)  # hold it across a loop turn, as a unit of work would
            gate.release()

        tasks = []
        for i in range(10):
            tasks.append(asyncio.create_task(wait(i)))
            while gate.waiting < i + 1:
                await asyncio.sleep(0)
        gate.release()
        await asyncio.gather(*tasks)
        return order

    assert asyncio.run(main()) == list(range(10))


def test_a_task_cannot_take_a_permit_handed_to_a_woken_waiter() -> None:
    """A released permit belongs to the woken task even before it runs (no barging)."""

    async def main() -> None:
        gate = _FairGate(1)
        assert gate.try_acquire()
        waiter = asyncio.create_task(gate.acquire_async(5))
        while gate.waiting < 1:
            await asyncio.sleep(0)
        gate.release()  # the waiter is woken but has not run yet
        assert not gate.try_acquire()
        assert not await gate.acquire_async(0.05)
        assert await waiter

    asyncio.run(main())


def test_task_timeout_leaves_the_queue() -> None:
    """An asyncio waiter that times out leaves the queue; the permit goes to the next."""

    async def main() -> None:
        gate = _FairGate(1)
        assert gate.try_acquire()
        started = time.monotonic()
        assert not await gate.acquire_async(0.1)
        assert time.monotonic() - started >= 0.09
        assert gate.waiting == 0
        gate.release()
        assert await gate.acquire_async(0)

    asyncio.run(main())


def test_cancelled_task_passes_a_granted_permit_on() -> None:
    """A task cancelled just as its permit arrived hands the permit to the next in line."""

    async def main() -> None:
        gate = _FairGate(1)
        assert gate.try_acquire()
        first = asyncio.create_task(gate.acquire_async(5))
        second = asyncio.create_task(gate.acquire_async(5))
        while gate.waiting < 2:
            await asyncio.sleep(0)
        gate.release()  # granted to `first`...
        first.cancel()  # ...which is cancelled before it runs
        with contextlib.suppress(asyncio.CancelledError):
            await first
        assert await second
        assert gate.waiting == 0

    asyncio.run(main())


def test_a_release_from_another_thread_wakes_a_task() -> None:
    """A permit released in another thread (a finalizer there) reaches the task's loop."""

    async def main() -> None:
        gate = _FairGate(1)
        assert gate.try_acquire()
        waiter = asyncio.create_task(gate.acquire_async(5))
        while gate.waiting < 1:
            await asyncio.sleep(0)
        releaser = threading.Thread(target=gate.release)
        releaser.start()
        releaser.join()
        assert await asyncio.wait_for(waiter, 2)

    asyncio.run(main())
