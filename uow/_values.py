"""Numbers and flags as users pass them: normalized, or refused with uow's own error.

Shared by Settings (:class:`~uow.ConfigurationError`) and the per-unit arguments of
UnitOfWork and run_transaction (:class:`~uow.UsageError`), so that no value a user can
pass (an int too big for a float, ``Decimal('sNaN')``, a string, a bool, an object with
a broken ``__repr__``) escapes as ``OverflowError``, ``decimal.InvalidOperation`` or
``TypeError`` from deep inside uow.
"""

from __future__ import annotations

import math
import numbers
import operator
from decimal import Decimal

from ._errors import ConfigurationError, UsageError

__all__ = ["check_flag", "check_number", "shown"]

_SHOWN_MAX = 80


def shown(value: object) -> str:
    """``repr(value)`` for an error message: at most about 80 characters, and never raising."""
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a broken __repr__, or an int past Python's digit limit
        return f"<a {type(value).__name__}>"
    if len(text) > _SHOWN_MAX:
        return f"{text[: _SHOWN_MAX - 20]}... ({len(text)} characters)"
    return text


def _as_number(value: object, integer: bool) -> int | float | None:
    """``value`` as a plain int (or float, unless ``integer``); None if it is not one."""
    if isinstance(value, bool):  # an int subclass, but never meant as a number
        return None
    try:
        if isinstance(value, numbers.Integral):  # int, its subclasses, numpy integers
            return operator.index(value)
        if integer:
            return None
        if isinstance(value, numbers.Real | Decimal):  # float, Fraction, Decimal, numpy
            return float(value)
    except (ArithmeticError, ValueError, TypeError):  # sNaN, or too big for a float
        return None
    return None


def check_number(
    name: str,
    value: object,
    low: float,
    high: float,
    *,
    integer: bool = False,
    low_open: bool = False,
    special: tuple[int, ...] = (),
    extra: str = "",
    written: str | None = None,
    error: type[ConfigurationError | UsageError] = ConfigurationError,
) -> int | float:
    """Return ``value`` as a plain int or float within ``[low, high]``, else raise ``error``.

    Durations (``integer=False``) take ints, floats, Decimals, Fractions and other real
    numbers, finite; ``special`` values are accepted as they are (-1 for "never").
    ``written`` is how the user wrote the value (an environment variable's text), shown
    in the error instead of its repr.
    """
    number = _as_number(value, integer)
    if number is not None and number in special:
        return number
    # An int is compared exactly: math.isfinite(10**400) would overflow.
    if (
        number is not None
        and (isinstance(number, int) or math.isfinite(number))
        and (number > low if low_open else number >= low)
        and number <= high
    ):
        return number
    extra = f" {extra}" if extra else ""
    if integer:
        accepted = f"an integer from {low:g} to {high:g}"
    else:
        bound = f"over {low:g}" if low_open else f"from {low:g}"
        accepted = f"a number of seconds {bound} to {high:g}"
    if written is None or len(written) > _SHOWN_MAX:
        written = shown(value)
    raise error(f"{name}={written} is invalid; use {accepted}{extra}")


def check_flag(
    name: str, value: object, *, error: type[ConfigurationError | UsageError] = ConfigurationError
) -> bool:
    """Return ``value`` if it is True or False, else raise ``error``: ``"no"`` is truthy."""
    if not isinstance(value, bool):
        raise error(f"{name}={shown(value)} is invalid; use True or False")
    return value
