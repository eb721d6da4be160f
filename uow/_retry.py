"""Run a whole unit of work again when it failed for a transient reason.

:func:`run_transaction`, :func:`run_transaction_async` and :func:`transactional` take
the same nine options; each builds one :class:`RetryPolicy` from them, checked once,
and the policy runs the attempts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

from ._async import AsyncUnitOfWork
from ._database import Database
from ._errors import TransientError, UsageError
from ._unit_of_work import UnitOfWork
from ._unit_options import check_unit_options
from ._values import check_number, shown

__all__ = ["RetryPolicy", "run_transaction", "run_transaction_async", "transactional"]

logger = logging.getLogger("uow")

P = ParamSpec("P")
T = TypeVar("T")
U = TypeVar("U", bound=UnitOfWork)
A = TypeVar("A", bound=AsyncUnitOfWork)


class _Retryable(Protocol):
    def _begin_retry(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """The options of one retried unit of work, checked once when built.

    Raises:
        UsageError: an option is not one run_transaction accepts; the message names it.
    """

    retries: int = 5
    unit_of_work: Callable[..., Any] = UnitOfWork
    database: Database | None = None
    isolation: str | None = None
    readonly: bool = False
    timeout: float | None = None
    replica: bool = True
    backoff: float = 0.05
    max_backoff: float = 2.0

    def __post_init__(self) -> None:
        retries = check_number("retries", self.retries, 0, 100, integer=True, error=UsageError)
        first = check_number("backoff", self.backoff, 0.0, 60.0, low_open=True, error=UsageError)
        cap = check_number(
            "max_backoff", self.max_backoff, 0.0, 60.0, low_open=True, error=UsageError
        )
        if first > cap:
            raise UsageError(
                f"backoff={self.backoff!r}, max_backoff={self.max_backoff!r} are invalid; "
                "use 0 < backoff <= max_backoff <= 60 seconds"
            )
        if not callable(self.unit_of_work):
            raise UsageError(
                f"unit_of_work={shown(self.unit_of_work)} is invalid; pass a unit-of-work class "
                "such as UnitOfWork or a subclass of it"
            )
        # Not database: a unit_of_work factory may take something else there (a fake's store).
        check_unit_options(None, self.readonly, self.isolation, self.timeout, self.replica)
        for name, value in (("retries", int(retries)), ("backoff", first), ("max_backoff", cap)):
            object.__setattr__(self, name, value)  # normalized: Decimal("0.1") -> 0.1

    def new_unit(self) -> Any:
        """A fresh unit of work for one attempt."""
        # replica is passed only when not the default, so unit-of-work factories that
        # predate the argument keep working.
        where = {} if self.replica else {"replica": False}
        return self.unit_of_work(
            self.database,
            isolation=self.isolation,
            readonly=self.readonly,
            timeout=self.timeout,
            **where,
        )

    def run(self, fn: Callable[[Any], T]) -> T:
        """Call ``fn(unit)`` in a new unit of work, again in a fresh one on a transient error."""
        attempt = 0
        while True:
            unit = self.new_unit()
            try:
                with unit:
                    result = fn(unit)
            except TransientError as exc:
                time.sleep(self._delay(exc, attempt, unit, fn))
                attempt += 1
                continue
            return result

    async def run_async(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        """:meth:`run` for asyncio: ``await fn(unit)`` in a new AsyncUnitOfWork each attempt."""
        attempt = 0
        while True:
            unit = self.new_unit()
            try:
                async with unit:
                    result = await fn(unit)
            except TransientError as exc:
                await asyncio.sleep(self._delay(exc, attempt, unit, fn))
                attempt += 1
                continue
            return result

    def _delay(self, exc: TransientError, attempt: int, unit: _Retryable, fn: object) -> float:
        """How long to wait before the next attempt; re-raises ``exc`` when there is none."""
        if attempt >= self.retries or not unit._begin_retry():
            raise exc
        # Full jitter: retries from many callers spread out instead of colliding again.
        cap = min(self.max_backoff, self.backoff * 2**attempt)
        delay = random.uniform(0, cap)  # noqa: S311 - jitter, not security
        logger.info(
            "retrying %s (attempt %d of %d) in %.3fs after %s: %s",
            getattr(fn, "__qualname__", fn),
            attempt + 2,
            self.retries + 1,
            delay,
            type(exc).__name__,
            exc,
        )
        return delay


def _check_function(fn: object) -> None:
    if not callable(fn):
        raise UsageError(
            f"{shown(fn)} is not a function; pass the function to run, taking the unit of "
            "work as its first argument"
        )


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
    (40P01), :class:`~uow.ConnectionLost` (the connection died before COMMIT was
    sent, so nothing was kept) and :class:`~uow.ServerFull` (53300: no slot on the
    server; the retries wait for one, as a checkout waits for a pooled connection).
    Never retried: any other error, including :class:`~uow.CommitOutcomeUnknown`
    (COMMIT was in flight), :class:`~uow.PoolExhausted` (it already waited
    ``pool_timeout``) and any other :class:`~uow.DatabaseUnavailable` (retrying would
    only add load to a server that is down). Between attempts it sleeps with full-jitter
    exponential backoff: a random time up to ``min(max_backoff, backoff * 2**attempt)``
    seconds, so retries from many callers spread out instead of colliding again.

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
    _check_function(fn)
    options = locals()  # the keyword arguments: exactly RetryPolicy's fields
    del options["fn"]
    return RetryPolicy(**options).run(fn)


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
    _check_function(fn)
    options = locals()  # the keyword arguments: exactly RetryPolicy's fields
    del options["fn"]
    return await RetryPolicy(**options).run_async(fn)


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
    the ``unit_of_work`` given) and runs as :func:`run_transaction_async` would::

        @uow.transactional(retries=5, isolation="SERIALIZABLE", unit_of_work=BankUnitOfWork)
        def transfer(uow: BankUnitOfWork, source: int, target: int, amount: int) -> None:
            ...

        transfer(1, 2, 500)
    """
    options = locals()  # the keyword arguments: exactly RetryPolicy's fields
    del options["fn"]
    # Checked now, where the decorator is written, rather than on the first call.
    policy = RetryPolicy(**options)

    def decorate(function: Callable[Concatenate[Any, P], T]) -> Callable[P, T]:
        _check_function(function)
        if inspect.iscoroutinefunction(function):
            # Its own policy: one decorator object may also be applied to a plain def later.
            async_policy = policy
            if unit_of_work is UnitOfWork:
                async_policy = dataclasses.replace(policy, unit_of_work=AsyncUnitOfWork)

            @functools.wraps(function)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                return await async_policy.run_async(lambda unit: function(unit, *args, **kwargs))

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(function)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            return policy.run(lambda unit: function(unit, *args, **kwargs))

        return wrapper

    return decorate(fn) if fn is not None else decorate
