"""Bad per-unit arguments give uow's own errors, before any connection is taken."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from fractions import Fraction
from typing import Any

import hypothesis
import pytest
from hypothesis import strategies as st

from tests.helpers import any_value
from uow import (
    AsyncUnitOfWork,
    ConfigurationError,
    Database,
    UnitOfWork,
    UsageError,
    run_transaction,
    run_transaction_async,
    transactional,
)
from uow.testing import FakeUnitOfWork, InMemoryStore

URL = "postgresql://app:hunter2@db.example:5432/shop"


class _BrokenStr:
    """A value whose str() and repr() raise."""

    def __str__(self) -> str:
        raise RuntimeError("no str")

    __repr__ = __str__


UNITS: list[Callable[..., object]] = [UnitOfWork, AsyncUnitOfWork]


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: getattr(u, "__name__", ""))
@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("timeout", 10**400),  # raised OverflowError
        ("timeout", -(10**400)),
        ("isolation", _BrokenStr()),  # str() of it raised RuntimeError
        ("readonly", "no"),  # truthy: was taken as readonly
        ("readonly", 1),
        ("replica", "false"),
    ],
)
def test_bad_unit_arguments_raise_usage_error(
    unit: Callable[..., object], argument: str, value: object
) -> None:
    """UnitOfWork and AsyncUnitOfWork refuse bad arguments with UsageError naming them."""
    with pytest.raises(UsageError, match=argument):
        unit(**{argument: value})


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: getattr(u, "__name__", ""))
def test_a_url_passed_as_the_database_is_refused_without_its_password(
    unit: Callable[..., object],
) -> None:
    """UnitOfWork(url) raises UsageError saying how to build a Database; no password shown."""
    with pytest.raises(UsageError, match=r"uow\.Database") as info:
        unit(URL)
    assert "hunter2" not in str(info.value)


def test_database_refuses_a_url_in_place_of_settings() -> None:
    """Database(url) raises ConfigurationError pointing at Database(url=...); no password."""
    with pytest.raises(ConfigurationError, match="url=") as info:
        Database(URL)  # type: ignore[arg-type]
    assert "hunter2" not in str(info.value)


def test_good_unit_arguments_are_normalized() -> None:
    """Decimal and Fraction timeouts become floats; isolation is normalized."""
    unit = UnitOfWork(timeout=Decimal("2.5"), isolation="repeatable_read")
    assert (unit.timeout, type(unit.timeout), unit.isolation) == (2.5, float, "REPEATABLE READ")
    assert FakeUnitOfWork(InMemoryStore(), timeout=Fraction(1, 2)).timeout == 0.5


@pytest.mark.parametrize(
    "options",
    [
        {"retries": 10**400},
        {"retries": Decimal("sNaN")},
        {"retries": "5"},
        {"backoff": "x"},  # raised TypeError comparing str and int
        {"backoff": Decimal("sNaN")},  # raised decimal.InvalidOperation
        {"max_backoff": 10**400},
        {"backoff": 1.0, "max_backoff": 0.5},
        {"unit_of_work": 5},
        {"readonly": "no"},
        {"timeout": 10**400},
        {"wait": -1},
        {"wait": 3601},
        {"wait": "10"},
        {"wait": True},
        {"wait": float("nan")},
        {"wait": Decimal("sNaN")},
    ],
    ids=repr,
)
def test_bad_retry_options_raise_usage_error(options: dict[str, Any]) -> None:
    """run_transaction(), run_transaction_async() and transactional() raise UsageError."""
    with pytest.raises(UsageError, match=next(iter(options))):
        run_transaction(lambda unit: None, **options)
    coroutine = run_transaction_async(lambda unit: _nothing(), **options)
    with pytest.raises(UsageError, match=next(iter(options))):
        coroutine.send(None)
    with pytest.raises(UsageError, match=next(iter(options))):
        transactional(**options)


async def _nothing() -> None:
    """An async function that does nothing."""


def test_a_bad_wait_says_what_is_accepted() -> None:
    """wait= outside 0..3600 seconds is refused with the option's name and its range."""
    with pytest.raises(
        UsageError, match=r"^wait=-0\.5 is invalid; use a number of seconds from 0 to 3600$"
    ):
        run_transaction(lambda unit: None, wait=-0.5)


def test_transactional_checks_its_options_when_written() -> None:
    """@transactional(retries=-1) fails at decoration, not at the first call."""
    with pytest.raises(UsageError, match="retries"):

        @transactional(retries=-1)
        def never_called(unit: UnitOfWork) -> None:
            raise AssertionError


@pytest.mark.parametrize("fn", [5, "transfer", None], ids=repr)
def test_what_is_not_a_function_is_refused(fn: object) -> None:
    """transactional(5) and run_transaction(5) raise UsageError instead of TypeError later."""
    with pytest.raises(UsageError, match="not a function"):
        run_transaction(fn)  # type: ignore[arg-type]
    if fn is not None:  # transactional(None) is the decorator factory
        with pytest.raises(UsageError, match="not a function"):
            transactional(fn)


_ANY_VALUE = any_value(st.sampled_from([Decimal("sNaN"), _BrokenStr(), b"x", [1]]))


@hypothesis.settings(max_examples=300, deadline=None, database=None)
@hypothesis.given(
    arguments=st.dictionaries(
        st.sampled_from(["readonly", "isolation", "timeout", "replica"]), _ANY_VALUE, max_size=4
    )
)
def test_any_unit_arguments_give_usage_error_or_a_unit(arguments: dict[str, Any]) -> None:
    """Whatever the arguments, UnitOfWork() raises UsageError or describes a unit."""
    try:
        unit = UnitOfWork(**arguments)
    except UsageError:
        return
    assert unit.timeout is None or type(unit.timeout) in (int, float)
    assert type(unit.readonly) is bool
