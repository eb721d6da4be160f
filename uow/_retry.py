"""Run a whole unit of work again when it failed for a transient reason.

:func:`run_transaction`, :func:`run_transaction_async` and :func:`transactional` take
the same ten options; each builds one :class:`RetryPolicy` from them, checked once,
and the policy runs the attempts. Each call keeps its own count of attempts and, once
the database has gone away, the time it has been waiting for it (:class:`_Call`).
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
from ._errors import ConnectionLost, DatabaseUnavailable, TransientError, UsageError
from ._unit_of_work import UnitOfWork
from ._unit_options import check_unit_options
from ._values import check_number, shown

__all__ = ["RetryPolicy", "run_transaction", "run_transaction_async", "transactional"]

logger = logging.getLogger("uow")

P = ParamSpec("P")
T = TypeVar("T")
U = TypeVar("U", bound=UnitOfWork)
A = TypeVar("A", bound=AsyncUnitOfWork)


# While waiting out an outage the backoff cap stays at or under this, whatever
# max_backoff says: a switchover's outage lasts about 1.5 s, and with full jitter under
# 0.5 s (plus the outage gate's own 0.25 s) writes resume within about 0.75 s of the
# server's return. The outage gate refuses connects at once meanwhile, so these sleeps
# are what paces the attempts: about four per second per waiting caller.
_WAIT_BACKOFF_CAP = 0.5
# Errors after which nothing was written and the database itself is (for now) gone:
# down, full, read-only (ServerReadOnly is a DatabaseUnavailable), or the connection died
# before COMMIT. PoolExhausted is not one: the server answers, this process is busy.
_OUTAGE = (DatabaseUnavailable, ConnectionLost)


class _Retryable(Protocol):
    def _begin_retry(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """The options of one retried unit of work, checked once when built.

    ``wait=None`` is resolved when a call first meets an unavailable database: the
    ``failover_wait`` of ``database``, or of the database the failed unit ran on, so a
    policy may be built before the default database exists.

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
    wait: float | None = None

    def __post_init__(self) -> None:
        retries = check_number("retries", self.retries, 0, 100, integer=True, error=UsageError)
        if self.wait is not None:
            wait = check_number("wait", self.wait, 0.0, 3600.0, error=UsageError)
            object.__setattr__(self, "wait", float(wait))
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
        call = _Call(self, fn)
        while True:
            unit = self.new_unit()
            try:
                with unit:
                    result = fn(unit)
            except (TransientError, DatabaseUnavailable) as exc:
                delay = call.next_delay(exc, unit)
            else:
                call.succeeded()
                return result
            time.sleep(delay)

    async def run_async(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        """:meth:`run` for asyncio: ``await fn(unit)`` in a new AsyncUnitOfWork each attempt."""
        call = _Call(self, fn)
        while True:
            unit = self.new_unit()
            try:
                async with unit:
                    result = await fn(unit)
            except (TransientError, DatabaseUnavailable) as exc:
                delay = call.next_delay(exc, unit)
            else:
                call.succeeded()
                return result
            await asyncio.sleep(delay)


class _Call:
    """The attempts of one call of a :class:`RetryPolicy`: what to retry, and when.

    Outage errors (:data:`_OUTAGE`) are retried until ``wait`` seconds have passed since
    the first of them, without using up ``retries`` (an outage after the database has
    answered again starts a new wait; each ends in a commit or in an error that
    ``retries`` bounds, so a call cannot wait for ever); after that, or with ``wait=0``,
    they follow the rules without waiting: ``ConnectionLost`` and ``ServerFull`` are
    retried ``retries`` times (``ServerReadOnly`` too: it is a ``TransientError``), any
    other ``DatabaseUnavailable`` is raised. The other
    transient errors (serialization failures, deadlocks) use ``retries`` only.
    """

    __slots__ = ("_fn", "_policy", "_retried", "_wait", "_waited", "_waiting_since")

    def __init__(self, policy: RetryPolicy, fn: object) -> None:
        self._policy = policy
        self._fn = fn
        self._retried = 0  # retries counted against policy.retries
        self._wait: float | None = None  # resolved at the first outage error
        self._waiting_since: float | None = None
        self._waited = 0  # attempts that failed while waiting

    def next_delay(self, exc: Exception, unit: _Retryable) -> float:
        """Seconds to sleep before the next attempt; re-raises ``exc`` when there is none."""
        delay = self._waiting_delay(exc, unit) if isinstance(exc, _OUTAGE) else None
        if delay is None:
            if self._waiting_since is not None and not isinstance(exc, _OUTAGE):
                self._recovered()
            delay = self._retry_delay(exc)
        # Inside an open unit on the same database the outer transaction is aborted:
        # the error is its opener's, whatever it is. (_begin_retry also counts the retry.)
        if delay is None or not unit._begin_retry():
            if self._waiting_since is not None and self._waited > 1:
                self._gave_up(exc)
            raise exc
        if self._waited == 1 and self._waiting_since is not None:
            logger.warning(
                "%s: the database is unavailable (%s: %s); retrying for up to %gs",
                self._name(),
                type(exc).__name__,
                exc,
                self._wait,
            )
        return delay

    def succeeded(self) -> None:
        """The call's last attempt committed."""
        if self._waiting_since is not None:
            self._recovered()

    def _retry_delay(self, exc: Exception) -> float | None:
        """The sleep before retrying ``exc`` under ``retries``, or None if it is not retried."""
        policy = self._policy
        if not isinstance(exc, TransientError) or self._retried >= policy.retries:
            return None
        # Full jitter: retries from many callers spread out instead of colliding again.
        cap = min(policy.max_backoff, policy.backoff * 2**self._retried)
        delay = random.uniform(0, cap)  # noqa: S311 - jitter, not security
        self._retried += 1
        logger.info(
            "retrying %s (attempt %d of %d) in %.3fs after %s: %s",
            self._name(),
            self._retried + 1,
            policy.retries + 1,
            delay,
            type(exc).__name__,
            exc,
        )
        return delay

    def _waiting_delay(self, exc: Exception, unit: object) -> float | None:
        """The sleep before the next attempt while the wait lasts, else None."""
        now = time.monotonic()
        if self._wait is None:
            self._wait = _resolve_wait(self._policy, unit)
        if not self._wait:
            return None
        if self._waiting_since is None:
            self._waiting_since = now
        self._waited += 1
        left = self._waiting_since + self._wait - now
        if left <= 0:
            return None
        policy = self._policy
        cap = min(
            policy.max_backoff, _WAIT_BACKOFF_CAP, policy.backoff * 2 ** min(self._waited, 16)
        )
        # Wake up at the end of the wait for one last attempt, not after it.
        return min(left, random.uniform(0, cap))  # noqa: S311 - jitter, not security

    def _recovered(self) -> None:
        assert self._waiting_since is not None
        logger.info(
            "%s: the database is back after %.1fs (%d attempts failed meanwhile)",
            self._name(),
            time.monotonic() - self._waiting_since,
            self._waited,
        )
        self._waiting_since, self._waited = None, 0

    def _gave_up(self, exc: Exception) -> None:
        assert self._waiting_since is not None
        waited = time.monotonic() - self._waiting_since
        exc.add_note(
            f"uow waited {waited:.1f}s for the database to come back ({self._waited} failed "
            f"attempts, wait={self._wait:g}); pass a larger wait= or set UOW_FAILOVER_WAIT "
            "to wait longer"
        )
        logger.info(
            "%s: gave up after waiting %.1fs for the database (%d failed attempts): %s",
            self._name(),
            waited,
            self._waited,
            type(exc).__name__,
        )
        self._waiting_since, self._waited = None, 0

    def _name(self) -> object:
        return getattr(self._fn, "__qualname__", self._fn)


def _resolve_wait(policy: RetryPolicy, unit: object) -> float:
    """``policy.wait``, or the ``failover_wait`` of the database the failed unit ran on."""
    if policy.wait is not None:
        return policy.wait
    database = policy.database
    if not isinstance(database, Database):
        try:
            database = getattr(unit, "database", None)
        except UsageError:  # an in-memory fake has no database, and no failover to wait out
            return 0.0
    if not isinstance(database, Database):
        return 0.0
    return database.settings.failover_wait


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
    wait: float | None = None,
) -> T:
    """Call ``fn(uow)`` in a new unit of work, and again in a fresh one if it fails transiently.

    Retried ``retries`` times: :class:`~uow.SerializationFailure` (40001),
    :class:`~uow.DeadlockDetected` (40P01), :class:`~uow.ConnectionLost` (the connection
    died before COMMIT was sent, so nothing was kept), :class:`~uow.ServerFull`
    (53300: no slot on the server; the retries wait for one, as a checkout waits for a
    pooled connection) and :class:`~uow.ServerReadOnly` (25006: the server cannot take
    writes; its connections are replaced). Between these it sleeps with full-jitter
    exponential backoff: a random time up to ``min(max_backoff, backoff * 2**attempt)``
    seconds, so retries from many callers spread out instead of colliding again.

    Waiting out a failover: while the database is unavailable (down, restarting, full,
    read-only: any :class:`~uow.DatabaseUnavailable`) or a connection is lost before
    COMMIT, it keeps trying for up to ``wait`` seconds from the first such failure,
    whatever ``retries`` says, with the same backoff capped at 0.5 s so that work
    resumes within about a second of the server's return. Nothing was written in any of
    these cases. When the wait runs out, the last error is raised, with a note saying
    how long it waited; ``wait=0`` raises a ``DatabaseUnavailable`` at once.

    Never retried: any other error, including :class:`~uow.CommitOutcomeUnknown`
    (COMMIT was in flight, it may have committed) and :class:`~uow.PoolExhausted` (it
    already waited ``pool_timeout`` for a connection, and retrying a full pool only adds
    to the load that filled it).

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
        wait: seconds to keep retrying while the database is unavailable (0 to 3600);
            None for the database's ``failover_wait`` setting (``UOW_FAILOVER_WAIT``,
            10 s by default), read when the database first fails.

    Returns:
        What ``fn`` returned in the attempt that committed.

    Raises:
        TransientError: the last attempt's error, once the retries are used up.
        DatabaseUnavailable: the last attempt's error, once ``wait`` has run out.
        UsageError: an option is invalid; the message names it and its range.
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
    wait: float | None = None,
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
    wait: float | None = None,
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
