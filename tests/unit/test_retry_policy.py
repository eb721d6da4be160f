"""One retry policy: run_transaction, run_transaction_async and transactional share it."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from uow import AsyncUnitOfWork, UnitOfWork, run_transaction, run_transaction_async, transactional
from uow._retry import RetryPolicy

_ENTRY_POINTS: list[Callable[..., Any]] = [run_transaction, run_transaction_async, transactional]


def _options(function: Callable[..., Any]) -> dict[str, Any]:
    parameters = inspect.signature(function).parameters.values()
    return {p.name: p.default for p in parameters if p.kind is p.KEYWORD_ONLY}


@pytest.mark.parametrize("function", _ENTRY_POINTS, ids=lambda f: f.__name__)
def test_each_entry_point_takes_exactly_the_policys_options(function: Callable[..., Any]) -> None:
    """An option added to the policy but not to an entry point (or the reverse) fails here."""
    fields = {f.name: f.default for f in dataclasses.fields(RetryPolicy)}
    expected = dict(fields)
    if function is run_transaction_async:
        expected["unit_of_work"] = AsyncUnitOfWork
    assert _options(function) == expected


def test_the_policy_is_checked_once_and_normalized() -> None:
    """Built from users' values, the policy holds plain numbers and cannot change."""
    policy = RetryPolicy(retries=3, backoff=Decimal("0.5"), max_backoff=1, wait=Decimal("2.5"))
    assert (policy.retries, policy.backoff, policy.max_backoff) == (3, 0.5, 1)
    assert (type(policy.retries), type(policy.backoff)) == (int, float)
    assert (policy.wait, type(policy.wait)) == (2.5, float)
    assert RetryPolicy(wait=0).wait == 0.0
    assert RetryPolicy().wait is None  # the database's failover_wait, read when it fails
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.retries = 7  # type: ignore[misc]


def test_the_policy_opens_the_unit_it_was_given() -> None:
    """Each attempt's unit gets the policy's options; replica only when not the default."""
    seen: list[dict[str, Any]] = []

    def factory(database: object, **options: Any) -> UnitOfWork:
        seen.append({"database": database, **options})
        return UnitOfWork()

    RetryPolicy(unit_of_work=factory, isolation="SERIALIZABLE", timeout=2).new_unit()
    RetryPolicy(unit_of_work=factory, readonly=True, replica=False).new_unit()
    assert seen == [
        {"database": None, "isolation": "SERIALIZABLE", "readonly": False, "timeout": 2},
        {
            "database": None,
            "isolation": None,
            "readonly": True,
            "timeout": None,
            "replica": False,
        },
    ]
