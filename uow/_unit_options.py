"""What a unit of work is given and declares: its options checked, its caller, its repositories."""

from __future__ import annotations

import sys
import typing
from pathlib import Path
from types import FrameType
from typing import Any

from ._database import Database
from ._errors import UsageError
from ._repository import Repository
from ._values import check_flag, check_number, shown

__all__ = ["ISOLATION_LEVELS", "caller_frame", "check_unit_options", "declared_repositories"]

ISOLATION_LEVELS = frozenset({"SERIALIZABLE", "REPEATABLE READ", "READ COMMITTED"})


def check_unit_options(
    database: object, readonly: object, isolation: object, timeout: object, replica: object
) -> tuple[str | None, float | None]:
    """Check a unit of work's arguments; return its isolation and timeout, normalized.

    Raises:
        UsageError: an argument is not one a unit of work accepts; the message names it.
    """
    defaults = readonly is False and replica is True and isolation is None and timeout is None
    if defaults and (database is None or isinstance(database, Database)):
        return None, None  # as most units are opened: nothing else to check or normalize
    if database is not None and not isinstance(database, Database):
        # Not the value: a URL given here by mistake may carry a password.
        raise UsageError(
            f"database= takes a uow.Database, or None for the default one, not a "
            f"{type(database).__name__}; build one with uow.Database(uow.Settings(url=...))"
        )
    check_flag("readonly", readonly, error=UsageError)
    check_flag("replica", replica, error=UsageError)
    level = None
    if isolation is not None:
        if isinstance(isolation, str):
            level = " ".join(str.__str__(isolation).replace("_", " ").upper().split())
        if level not in ISOLATION_LEVELS:
            raise UsageError(
                f"isolation={shown(isolation)} is not supported; "
                f"use one of {sorted(ISOLATION_LEVELS)}"
            )
    seconds = None
    if timeout is not None:
        seconds = check_number("timeout", timeout, 0.001, 86400.0, error=UsageError)
    return level, seconds


def caller_frame(entry: str = "__enter__") -> FrameType:
    """The frame that entered the unit of work: the first outside uow and its ``entry``s.

    For ``async with`` the same holds: a running coroutine's frame links back through
    the coroutines awaiting it, so the caller is on the chain while its block runs.
    """
    frame = sys._getframe(2)
    while frame.f_back is not None and (
        frame.f_code.co_filename.startswith(_PACKAGE) or frame.f_code.co_name == entry
    ):
        frame = frame.f_back
    return frame


_PACKAGE = str(Path(__file__).parent)


_declared: dict[tuple[type[Any], type[Any]], list[tuple[str, type[Any], type[Any]]]] = {}


def declared_repositories(
    cls: type[Any], family: type[Any] = Repository
) -> list[tuple[str, type[Any], type[Any]]]:
    """The repositories a unit-of-work class declares: (attribute, repository class, model).

    ``family`` is the repository base class to look for (AsyncRepository for async units).
    """
    found = _declared.get((cls, family))
    if found is None:
        found = []
        for name, hint in typing.get_type_hints(cls).items():
            origin = typing.get_origin(hint) or hint
            if not (isinstance(origin, type) and issubclass(origin, family)):
                continue
            args = typing.get_args(hint)
            model = args[0] if args else getattr(origin, "model", None)
            if not isinstance(model, type):
                raise UsageError(
                    f"{cls.__name__}.{name}: cannot tell which model {hint!r} is for; "
                    "annotate it as Repository[Model] or a subclass of Repository[Model]"
                )
            found.append((name, origin, model))
        _declared[cls, family] = found
    return found
