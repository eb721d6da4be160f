"""Checks of what callers pass to repositories, shared by the real, async and in-memory ones.

SQLAlchemy reacts to a wrong attribute name or row shape in many ways (a bare
``KeyError`` or ``AttributeError``, an ``InvalidRequestError`` from deep inside
compilation, or nothing at all: the ORM bulk INSERT drops unknown keys). These
checks turn each into one :class:`~uow.UsageError` that names the method, the bad
key or row, and what the model has. They look only at the mapper: no I/O.
Messages name keys and positions, never values, which may be secrets.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from sqlalchemy import inspect
from sqlalchemy.orm import Mapper

from ._errors import MultipleRowsFound, UsageError

__all__ = [
    "check_attributes",
    "check_columns",
    "check_criteria",
    "check_ident",
    "check_instance",
    "check_values",
    "column_names",
    "mapper_of",
    "mapping_rows",
    "multiple_rows",
    "primary_key",
]

_MAPPERS: dict[type[Any], Mapper[Any]] = {}


def mapper_of(model: type[Any]) -> Mapper[Any]:
    """The mapper of a mapped class, looked up once."""
    mapper = _MAPPERS.get(model)
    if mapper is None:
        mapper = _MAPPERS[model] = inspect(model)
    return mapper


@functools.cache
def _column_keys(mapper: Mapper[Any]) -> frozenset[str]:
    return frozenset(mapper.columns.keys())


@functools.cache
def _attribute_keys(mapper: Mapper[Any]) -> frozenset[str]:
    return frozenset(mapper.attrs.keys())


def _listed(keys: Iterable[Any]) -> str:
    return ", ".join(repr(key) for key in sorted(keys, key=str))


def check_columns(model: type[Any], keys: Iterable[Any], what: str) -> None:
    """Raise UsageError unless every key is a column attribute of ``model``."""
    known = _column_keys(mapper_of(model))
    if unknown := set(keys) - known:
        raise UsageError(
            f"{what}: {model.__name__} has no column {_listed(unknown)}; "
            f"its columns are {_listed(known)}"
        )


def check_attributes(model: type[Any], by: Mapping[str, Any], what: str) -> None:
    """Raise UsageError unless every key of an equality filter is an attribute of ``model``."""
    mapper = mapper_of(model)
    if unknown := set(by) - _attribute_keys(mapper):
        raise UsageError(
            f"{what}: {model.__name__} has no attribute {_listed(unknown)}; "
            f"its columns are {_listed(_column_keys(mapper))}"
        )


def check_values(model: type[Any], values: Any, what: str) -> None:
    """Raise UsageError unless ``values`` maps column attribute names to new values."""
    if not isinstance(values, Mapping):
        raise UsageError(
            f"{what}: values must map attribute names to new values such as "
            f"{{'qty': 0}}, not a {type(values).__name__}"
        )
    check_columns(model, values, what)


def column_names(model: type[Any], keys: Any, argument: str, what: str) -> list[str]:
    """``keys`` (``conflict=``, ``update=``) as a list of column attribute names, checked."""
    if isinstance(keys, str) or not isinstance(keys, Iterable):
        raise UsageError(
            f"{what}: {argument}= takes a sequence of attribute names such as ['name'], "
            f"not a {type(keys).__name__}"
        )
    names = list(keys)
    check_columns(model, names, f"{what} {argument}=")
    return names


def mapping_rows(rows: Any, what: str) -> Iterator[Mapping[str, Any]]:
    """Iterate over ``rows``, raising UsageError at the first that is not a mapping."""
    if isinstance(rows, Mapping):
        raise UsageError(f"{what} takes an iterable of rows; for one row, pass [row]")
    if isinstance(rows, str | bytes) or not isinstance(rows, Iterable):
        raise UsageError(
            f"{what} takes an iterable of mappings of attribute names to values, "
            f"not a {type(rows).__name__}"
        )
    for index, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise UsageError(
                f"{what}: row {index} is a {type(row).__name__}, not a mapping of attribute "
                "names to values such as {'name': ...}"
            )
        yield row


def primary_key(model: type[Any]) -> tuple[str, ...]:
    """The attribute names of ``model``'s primary key, in order."""
    return _primary_key(mapper_of(model))


@functools.cache
def _primary_key(mapper: Mapper[Any]) -> tuple[str, ...]:
    return tuple(mapper.get_property_by_column(column).key for column in mapper.primary_key)


@functools.cache
def _key_names(mapper: Mapper[Any]) -> frozenset[str]:
    # session.get() also takes synonyms of the key's attributes in a dict.
    keys = _primary_key(mapper)
    return frozenset([*keys, *(s.key for s in mapper.synonyms if s.name in keys)])


def check_ident(model: type[Any], ident: Any, what: str) -> None:
    """Raise UsageError unless ``ident`` has the shape of ``model``'s primary key."""
    mapper = mapper_of(model)
    keys = _primary_key(mapper)
    if ident is None:
        problem = f"{what}(None): no row has a NULL primary key"
    elif isinstance(ident, Mapping):
        if len(ident) == len(keys) and set(ident) <= _key_names(mapper):
            return
        problem = f"{what}: the keys {_listed(ident)} do not match"
    elif isinstance(ident, tuple):
        if len(ident) == len(keys):
            return
        problem = f"{what}: {len(ident)} values given"
    elif len(keys) > 1:
        problem = f"{what}: one value given for a composite key (pass a tuple or a dict)"
    else:
        return
    raise UsageError(f"{problem}; {model.__name__}'s primary key is ({', '.join(keys)})")


def check_instance(model: type[Any], obj: Any, what: str) -> None:
    """Raise UsageError unless ``obj`` is an instance of ``model`` (or of a subclass)."""
    if not isinstance(obj, model):
        raise UsageError(
            f"{what}: got a {type(obj).__name__}; this repository holds {model.__name__} "
            f"objects (use the {type(obj).__name__} repository for that one)"
        )


def check_criteria(model: type[Any], by: Mapping[str, Any], what: str) -> None:
    """``get_by``'s criteria: at least one, each an attribute of ``model``."""
    if not by:
        raise UsageError(
            f"{what}() needs attribute=value criteria, as in {what}(name=...); "
            "to fetch by primary key, use get()"
        )
    check_attributes(model, by, what)


def multiple_rows(model: type[Any], by: Mapping[str, Any]) -> MultipleRowsFound:
    """The error of a ``get_by`` that matched more than one row."""
    # The criteria's names, not their values: those may be personal data or secrets.
    return MultipleRowsFound(
        f"get_by: more than one {model.__name__} has these {', '.join(sorted(by))}; "
        "get_by() is for attributes that identify one row (a unique constraint), "
        "use list() to fetch several"
    )
