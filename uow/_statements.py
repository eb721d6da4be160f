"""Repository statements built once per shape and reused with bound parameters.

Building ``update(table).values(...).where(...)`` on every call costs more client CPU
than sending it: SQLAlchemy caches the *compiled* form, but it still constructs the
statement, walks it for its cache key and maps the new literal values onto the cached
compilation (about 125 us of CPU per execution here, against 80 us for the whole
execution of a statement built once). So a repository operation is reduced to its
*shape* (the operation, the model, the names of the columns it sets or filters on, the
structure of its SQL criteria and its options) and its *values*; the statement is built
once per shape with a :func:`~sqlalchemy.bindparam` for every value and executed with
a parameters dict afterwards.

SQL criteria passed by the caller (``Account.id == 5``) are new objects on every call:
their shape is SQLAlchemy's own cache key (the structure without the literal values,
the key its compiled cache uses) and their values are the literals that key extracts,
in the same order for the same structure. A criterion SQLAlchemy cannot cache, or one
with bound parameters uow cannot rename safely (a named ``bindparam()``, a ``text()``
clause, a value computed late), makes the call build its statement as before.

Shapes come from the code that calls a repository, not from the data it passes (the
number of upserted rows is part of the data, so only single-row upserts are cached), so
the cache stays small; it is bounded all the same (``LIMIT`` shapes, oldest dropped
first), so a program that makes up criteria from data costs CPU, never memory.
Thread-safe: lookups are plain dict reads; filling takes a lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any, TypeVar, cast

from sqlalchemy import bindparam
from sqlalchemy.sql import visitors
from sqlalchemy.sql.elements import BindParameter, ClauseElement

__all__ = ["LIMIT", "Shape", "cached", "clear", "element_of", "equal_to", "rebound", "size"]

LIMIT = 1024
"""At most this many statements are kept (all repositories and models together)."""

StatementT = TypeVar("StatementT")

_statements: dict[Hashable, Any] = {}
_fill = threading.Lock()


def cached(key: Hashable, build: Callable[[], StatementT]) -> StatementT:
    """The statement of this shape, built by ``build()`` on the first call."""
    statement: StatementT | None = _statements.get(key)
    if statement is None:
        statement = build()
        with _fill:
            if len(_statements) >= LIMIT:
                del _statements[next(iter(_statements))]
            _statements[key] = statement
    return statement


def clear() -> None:
    """Forget every statement (tests)."""
    with _fill:
        _statements.clear()


def size() -> int:
    """How many statements are cached."""
    return len(_statements)


def element_of(thing: Any) -> ClauseElement | None:
    """``thing`` as a SQL element (an ORM attribute's column), or None if it is not SQL."""
    if isinstance(thing, ClauseElement):
        return thing
    clause = getattr(thing, "__clause_element__", None)
    if clause is not None:
        element = clause()
        if isinstance(element, ClauseElement):
            return element
    return None


def _renamable(bind: BindParameter[Any]) -> bool:
    # An anonymous literal (what `column == 5` makes), holding its value now. A named
    # bindparam() may be referred to by name (text(":x")); a callable_ value is computed
    # late (ORM relationship comparisons): both keep the statement built per call.
    return bind.unique and bind.callable is None and not bind.isoutparam and bind.required is False


class Shape:
    """One call of a repository operation: its cache key, and the values to bind.

    Add the parts in a fixed order; ``key`` is then the statement's cache key (None when
    a part cannot be reused: build the statement as before) and ``params`` the values.
    """

    __slots__ = ("_parts", "params")

    def __init__(self, *parts: object) -> None:
        self._parts: list[object] | None = list(parts)
        self.params: dict[str, Any] = {}

    @property
    def key(self) -> tuple[object, ...] | None:
        """The hashable shape, or None if this call's statement must be built afresh."""
        return None if self._parts is None else tuple(self._parts)

    def add(self, part: object) -> None:
        """An option that changes the statement (``for_update``, has a limit...)."""
        if self._parts is not None:
            self._parts.append(part)

    def expressions(self, name: str, things: Iterable[Any]) -> None:
        """SQL expressions: their structure joins the key, their literals the params."""
        if self._parts is None:
            return
        keys = []
        for index, thing in enumerate(things):
            element = element_of(thing)
            key = None if element is None else element._generate_cache_key()
            if key is None:
                self._parts = None
                return
            for position, bind in enumerate(key.bindparams):
                if not _renamable(bind):
                    self._parts = None
                    return
                self.params[_bind_name(name, index, position)] = bind.value
            keys.append(key.key)
        self._parts.append((name, tuple(keys)))

    def equals(self, name: str, values: Mapping[str, Any]) -> None:
        """Equality filters by attribute name (``filter_by``): ``IS NULL`` for None."""
        if self._parts is None:
            return
        if any(element_of(value) is not None for value in values.values()):
            self._parts = None  # compared to SQL, not to a value: nothing to bind
            return
        self._parts.append((name, tuple((key, value is None) for key, value in values.items())))
        for key, value in values.items():
            if value is not None:
                self.params[f"uow_{name}_{key}"] = value


def _bind_name(name: str, index: int, position: int) -> str:
    return f"uow_{name}{index}_{position}"


def rebound(name: str, things: Iterable[Any]) -> list[ClauseElement]:
    """The expressions of :meth:`Shape.expressions`, their literals bound by name."""
    elements = []
    for index, thing in enumerate(things):
        element = element_of(thing)
        assert element is not None  # Shape.expressions checked it
        key = element._generate_cache_key()
        assert key is not None
        names = {
            id(bind): _bind_name(name, index, position)
            for position, bind in reversed(list(enumerate(key.bindparams)))
        }
        # (typed for ExternallyTraversible, which ClauseElement is at runtime)
        replaced = visitors.replacement_traverse(
            cast("Any", element), {}, cast("Any", _renamer(names))
        )
        assert isinstance(replaced, ClauseElement)
        elements.append(replaced)
    return elements


def _renamer(names: dict[int, str]) -> Callable[[Any], BindParameter[Any] | None]:
    def replace(node: Any) -> BindParameter[Any] | None:
        if not (isinstance(node, BindParameter) and id(node) in names):
            return None
        bound: BindParameter[Any] = bindparam(
            names[id(node)],
            type_=node.type,
            expanding=node.expanding,
            literal_execute=node.literal_execute,
        )
        bound.expand_op = node.expand_op  # IN of a tuple_() renders differently
        return bound

    return replace


def equal_to(name: str, values: Mapping[str, Any], column: Callable[[str], Any]) -> list[Any]:
    """The criteria of :meth:`Shape.equals`: ``column(key) == :uow_<name>_<key>`` or IS NULL."""
    return [
        column(key).is_(None)
        if value is None
        else column(key) == bindparam(f"uow_{name}_{key}", type_=column(key).type)
        for key, value in values.items()
    ]
