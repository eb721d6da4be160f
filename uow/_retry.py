"""Run a whole unit of work again when it failed for a transient reason."""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, Concatenate, NamedTuple, ParamSpec, TypeVar

from ._async import AsyncUnitOfWork
from ._database import Database
from ._errors import TransientError, UsageError
from ._unit_of_work import UnitOfWork, check_unit_options, joined_unit_open
from ._values import check_number, shown

__all__ = ["run_transaction", "run_transaction_async", "transactional"]

logger = logging.getLogger("uow")

P = ParamSpec("P")
T = TypeVar("T")
U = TypeVar("U", bound=UnitOfWork)
A = TypeVar("A", bound=AsyncUnitOfWork)


def run_transaction(
    fn: Callable[[U], T],
    *,
    retries: int = 5,
    unit_of_work: Callable[..., U] = UnitOfWork,  # type: ignore[assignment]
    database: Database | None = None,
    isolation: str | None = None,
    readonly: bool = False,
    timeout: float | None = None,
    replica: bool = True,
    backoff: float = 0.05,
    max_backoff: float = 2.0,
) -> T:
    """Call ``fn(uow)`` in a new unit of work, and again in a fresh one if it fails transiently.

    Retried: :class:`~uow.SerializationFailure` (40001), :class:`~uow.DeadlockDetected`
    (40P01) and :class:`~uow.ConnectionLost` (the connection died before COMMIT was
    sent, so nothing was kept). Never retried: any other error, including
    :class:`~uow.CommitOutcomeUnknown` (COMMIT was in flight) and
    :class:`~uow.DatabaseUnavailable` (retrying would only add load to a server that is
    down). Between attempts it sleeps with full-jitter exponential backoff: a random
    time up to ``min(max_backoff, backoff * 2**attempt)`` seconds, so retries from many
    callers spread out instead of colliding again.

    ``fn`` runs once per attempt, so it must not have effects outside the transaction
    (send mail with ``uow.on_commit``). Inside an open unit of work on the same database
    there is no retry: the outer transaction is already aborted, so the error goes up to
    whoever opened it.

    Args:
        fn: called with the unit of work; its return value is returned.
        retries: how many times to run ``fn`` again after the first attempt (0 to 100).
        unit_of_work: the class to open, e.g. your ``BankUnitOfWork``.
        database: passed to the unit of work; defaults to the default database.
        isolation: passed to the unit of work, e.g. ``"SERIALIZABLE"``.
        readonly: passed to the unit of work.
        timeout: passed to the unit of work (per statement).
        replica: passed to the unit of work; False reads from the primary.
        backoff: the first backoff cap in seconds.
        max_backoff: the largest backoff cap in seconds.

    Returns:
        What ``fn`` returned in the attempt that committed.

    Raises:
        TransientError: the last attempt's error, once the retries are used up.
    """
    _check_callables(fn, unit_of_work)
    policy = _check_options(retries, backoff, max_backoff)
    attempt = 0
    while True:
        unit = unit_of_work(
            database, isolation=isolation, readonly=readonly, timeout=timeout, **_where(replica)
        )
        try:
            with unit:
                result = fn(unit)
        except TransientError as exc:
            time.sleep(_retry_delay(exc, attempt, policy, unit=unit, fn=fn))
            attempt += 1
            continue
        return result


async def run_transaction_async(
    fn: Callable[[A], Awaitable[T]],
    *,
    retries: int = 5,
    unit_of_work: Callable[..., A] = AsyncUnitOfWork,  # type: ignore[assignment]
    database: Database | None = None,
    isolation: str | None = None,
    readonly: bool = False,
    timeout: float | None = None,
    replica: bool = True,
    backoff: float = 0.05,
    max_backoff: float = 2.0,
) -> T:
    """:func:`run_transaction` for asyncio: ``await fn(uow)`` in an AsyncUnitOfWork."""
    _check_callables(fn, unit_of_work)
    policy = _check_options(retries, backoff, max_backoff)
    attempt = 0
    while True:
        unit = unit_of_work(
            database, isolation=isolation, readonly=readonly, timeout=timeout, **_where(replica)
        )
        try:
            async with unit:
                result = await fn(unit)
        except TransientError as exc:
            await asyncio.sleep(_retry_delay(exc, attempt, policy, unit=unit._core, fn=fn))
            attempt += 1
            continue
        return result


def _where(replica: bool) -> dict[str, bool]:
    # Passed only when not the default, so unit-of-work factories that predate the
    # argument keep working.
    return {} if replica else {"replica": False}


def _check_options(retries: object, backoff: object, max_backoff: object) -> _Policy:
    count = check_number("retries", retries, 0, 100, integer=True, error=UsageError)
    first = check_number("backoff", backoff, 0.0, 60.0, low_open=True, error=UsageError)
    cap = check_number("max_backoff", max_backoff, 0.0, 60.0, low_open=True, error=UsageError)
    if first > cap:
        raise UsageError(
            f"backoff={backoff!r}, max_backoff={max_backoff!r} are invalid; "
            "use 0 < backoff <= max_backoff <= 60 seconds"
        )
    return _Policy(int(count), first, cap)


def _check_callables(fn: object, unit_of_work: object) -> None:
    if not callable(fn):
        raise UsageError(
            f"{shown(fn)} is not a function; pass the function to run, taking the unit of "
            "work as its first argument"
        )
    _check_factory(unit_of_work)


def _check_factory(unit_of_work: object) -> None:
    if not callable(unit_of_work):
        raise UsageError(
            f"unit_of_work={shown(unit_of_work)} is invalid; pass a unit-of-work class such "
            "as UnitOfWork or a subclass of it"
        )


class _Policy(NamedTuple):
    retries: int
    backoff: float
    max_backoff: float


def _retry_delay(
    exc: TransientError, attempt: int, policy: _Policy, *, unit: UnitOfWork, fn: object
) -> float:
    """How long to wait before the next attempt; re-raises ``exc`` when there is none."""
    retries = policy.retries
    if attempt >= retries or joined_unit_open(unit.database, unit._current_owner()):
        raise exc
    cap = min(policy.max_backoff, policy.backoff * 2**attempt)
    delay = random.uniform(0, cap)  # noqa: S311 - jitter, not security
    unit.database._count("retries")
    logger.info(
        "retrying %s (attempt %d of %d) in %.3fs after %s: %s",
        getattr(fn, "__qualname__", fn),
        attempt + 2,
        retries + 1,
        delay,
        type(exc).__name__,
        exc,
    )
    return delay


def transactional(
    fn: Callable[Concatenate[Any, P], T] | None = None,
    /,
    *,
    retries: int = 5,
    unit_of_work: Callable[..., UnitOfWork] = UnitOfWork,
    database: Database | None = None,
    isolation: str | None = None,
    readonly: bool = False,
    timeout: float | None = None,
    replica: bool = True,
    backoff: float = 0.05,
    max_backoff: float = 2.0,
) -> Any:
    """Decorate a function taking a unit of work first, to run it with retries.

    ``@transactional`` or ``@transactional(retries=5, isolation="SERIALIZABLE")``: the
    decorated function is called without its first argument, which the decorator
    fills with a fresh unit of work on each attempt. Same rules as
    :func:`run_transaction`. An ``async def`` function gets an AsyncUnitOfWork (or
    the ``unit_of_work`` given) and runs through :func:`run_transaction_async`::

        @uow.transactional(retries=5, isolation="SERIALIZABLE", unit_of_work=BankUnitOfWork)
        def transfer(uow: BankUnitOfWork, source: int, target: int, amount: int) -> None:
            ...

        transfer(1, 2, 500)
    """
    # Checked now, where the decorator is written, rather than on the first call.
    _check_options(retries, backoff, max_backoff)
    _check_factory(unit_of_work)
    # Not database: a unit_of_work factory may take something else there (a fake's store).
    check_unit_options(None, readonly, isolation, timeout, replica)
    options: dict[str, Any] = {
        "retries": retries,
        "unit_of_work": unit_of_work,
        "database": database,
        "isolation": isolation,
        "readonly": readonly,
        "timeout": timeout,
        "replica": replica,
        "backoff": backoff,
        "max_backoff": max_backoff,
    }

    def decorate(function: Callable[Concatenate[Any, P], T]) -> Callable[P, T]:
        _check_callables(function, unit_of_work)
        if inspect.iscoroutinefunction(function):
            # A copy: one decorator object may also be applied to a plain def later.
            async_options = dict(options)
            if unit_of_work is UnitOfWork:
                async_options["unit_of_work"] = AsyncUnitOfWork

            @functools.wraps(function)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                return await run_transaction_async(
                    lambda unit: function(unit, *args, **kwargs), **async_options
                )

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(function)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            return run_transaction(lambda unit: function(unit, *args, **kwargs), **options)

        return wrapper

    return decorate(fn) if fn is not None else decorate
