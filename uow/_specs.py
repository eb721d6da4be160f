"""One declaration per setting: environment variable, kind, range, meaning and why.

Each field of :class:`~uow.Settings` carries a :class:`Spec` in its metadata (see
:func:`setting`). Validation, ``Settings.from_env`` (the variable's name and how its text
is read), the repr and the generated reference table (``docs/reference/settings.md``,
written by ``docs/generate.py``) all read it, so a range or a variable's name is written
once. The checks of the values that are neither numbers nor flags live here too.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from ._errors import ConfigurationError
from ._values import check_flag, check_number, shown

__all__ = [
    "Spec",
    "about",
    "read_environment",
    "setting",
    "setting_factory",
    "spec_of",
    "specs",
]

T = TypeVar("T")
Kind = Literal["count", "seconds", "flag", "text", "url", "urls", "mapping"]

_KEY = "uow.setting"
_ENV_PREFIX = "UOW_"
# UOW_ variables read by other parts of uow (tests, migrations), not settings.
_NOT_SETTINGS = ("UOW_TEST_", "UOW_MIGRATIONS_")
logger = logging.getLogger("uow")


@dataclass(frozen=True, slots=True)
class Spec:
    """How one setting is named, read, checked and documented.

    ``doc`` says what the setting does and ``why`` why its default is what it is; both
    are Markdown, shown in the reference table and appended to ``Settings.__doc__``.
    """

    env: str | None
    """Environment variable ``from_env`` reads it from; None: not read from the environment."""
    kind: Kind
    """How it is read from the environment and checked: see :data:`Kind`."""
    doc: str
    why: str
    unit: str = ""
    """What a ``count`` counts: connections, processes."""
    low: float = 0.0
    high: float = 0.0
    low_open: bool = False
    """``low`` itself is refused: the value must be over it."""
    special: tuple[int, ...] = ()
    """Values accepted outside ``[low, high]``, such as -1 for "never"."""
    special_doc: str = ""
    zero: str = ""
    """What 0 means, when it means something (``off``)."""
    resolution: float = 0.0
    """The smallest value above 0 that is accepted (PostgreSQL's timeouts are in ms)."""
    default_doc: str = ""
    """The default as documented, when a function computes it."""
    accepted: str = ""
    """The accepted values, in words, for text, URLs and mappings."""
    check_text: Callable[[str, object], object] | None = None
    """The check of a ``text`` setting: ``(name, value) -> value``, raising ConfigurationError."""

    def check(self, name: str, value: object, written: str | None = None) -> object:
        """``value`` normalized to its plain type, or ConfigurationError naming ``name``.

        ``written`` is the value as the user wrote it (an environment variable's text),
        shown in the error instead of the parsed value.
        """
        if self.kind == "flag":
            return check_flag(name, value)
        if self.kind == "text" and self.check_text is not None:
            return self.check_text(name, value)
        if self.kind not in ("count", "seconds"):
            return value
        extra = " ".join(f"or {special}" for special in self.special)
        number = check_number(
            name,
            value,
            self.low,
            self.high,
            integer=self.kind == "count",
            low_open=self.low_open,
            special=self.special,
            extra=extra,
            written=written,
        )
        if 0 < number < self.resolution:
            as_written = written if written and len(written) <= 80 else shown(number)
            raise ConfigurationError(
                f"{name}={as_written} is below PostgreSQL's "
                f"{self.resolution * 1000:g} ms resolution; use 0 to disable it or a value of "
                f"at least {self.resolution:g} seconds"
            )
        return number

    def parse(self, variable: str, raw: str) -> object:
        """The value of environment variable ``variable`` holding ``raw``, checked."""
        if not isinstance(raw, str):  # a mapping passed as environ may hold any type
            return raw
        if self.kind == "flag":
            if raw.strip().lower() in _TRUE:
                return True
            if raw.strip().lower() in _FALSE:
                return False
            raise ConfigurationError(
                f"{variable}={shown(raw)} is invalid; use true/false, 1/0, yes/no, on/off"
            )
        if self.kind == "count":
            try:
                value: object = int(raw)
            except ValueError:  # not a number, or more digits than Python converts
                raise ConfigurationError(
                    f"{variable}={shown(raw)} is invalid; use a whole number"
                ) from None
        elif self.kind == "seconds":
            match = _DURATION.match(raw)
            seconds = float(match[1]) * _UNIT_SECONDS[match[2]] if match else math.inf
            if not math.isfinite(seconds):  # not a duration, or too many digits for a float
                raise ConfigurationError(
                    f"{variable}={shown(raw)} is invalid; use seconds such as 2.5, or 500ms, "
                    "30s, 5min"
                )
            value = seconds
        elif self.kind == "text":
            return self.check(variable, raw)
        else:
            return raw
        return self.check(variable, value, written=raw.strip())

    def range_text(self) -> str:
        """The unit and accepted values, in words, for the reference table."""
        if self.kind == "flag":
            return "bool"
        if self.kind == "count":
            return f"{self.unit}, {self.low:g} to {self.high:g}"
        if self.kind != "seconds":
            return self.accepted
        bound = f"over {self.low:g}" if self.low_open else f"{self.low:g}"
        text = f"seconds, {bound} to {self.high:g}"
        if self.special:
            text += f", or {self.special_doc}"
        if self.zero:
            text += f"; 0 = {self.zero}"
        if self.resolution:
            text += f", else at least {self.resolution:g}"
        return text


def about(spec: Spec) -> dict[str, Spec]:
    """The metadata of a dataclass field declared by ``spec`` (for ``field(metadata=...)``)."""
    return {_KEY: spec}


def setting(default: T, env: str, kind: Kind, doc: str, why: str, **spec: Any) -> T:
    """A dataclass field with ``default``, declared by a :class:`Spec` of the other arguments."""
    return field(default=default, metadata={_KEY: Spec(env, kind, doc, why, **spec)})


def setting_factory(
    factory: Callable[[], T], env: str, kind: Kind, doc: str, why: str, **spec: Any
) -> T:
    """A dataclass field whose default ``factory`` computes, declared like :func:`setting`."""
    return field(default_factory=factory, metadata={_KEY: Spec(env, kind, doc, why, **spec)})


def spec_of(setting_field: dataclasses.Field[Any]) -> Spec:
    """The declaration of one field of Settings."""
    spec = setting_field.metadata[_KEY]
    assert isinstance(spec, Spec)
    return spec


def specs(cls: type) -> dict[str, Spec]:
    """Every setting of the dataclass ``cls`` with its declaration, in declaration order."""
    return {f.name: spec_of(f) for f in dataclasses.fields(cls)}


def read_environment(
    environ: Mapping[str, str], declared: Mapping[str, Spec], skip: Collection[str] = ()
) -> dict[str, object]:
    """The settings ``UOW_*`` variables in ``environ`` set, by setting name, checked.

    A ``UOW_`` variable that names no setting is logged as a warning (a typo would
    otherwise be ignored silently); settings named in ``skip`` are not read.
    """
    by_variable = {spec.env: name for name, spec in declared.items() if spec.env}
    by_variable.pop("DATABASE_URL", None)  # the caller's: it says how to set it
    values: dict[str, object] = {}
    for variable, raw in environ.items():
        if not variable.startswith(_ENV_PREFIX) or variable.startswith(_NOT_SETTINGS):
            continue
        name = by_variable.get(variable)
        if name is None:
            logger.warning("ignoring unknown setting %s; known: %s", variable, sorted(by_variable))
        elif name not in skip:
            values[name] = declared[name].parse(variable, raw)
    return values


def default_text(setting_field: dataclasses.Field[Any]) -> str:
    """A field's default as the reference table shows it (Markdown)."""
    spec = spec_of(setting_field)
    default = setting_field.default
    if spec.default_doc:
        return spec.default_doc
    if default is dataclasses.MISSING:
        return "(required)"
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, int | float):
        return f"{default:g}"
    if isinstance(default, str):
        return f"`{default}`"
    return "none"


def attributes_section(cls: type) -> str:
    """A Google-style ``Attributes:`` section for ``cls``'s docstring, from the specs."""
    lines = ["", "    Attributes:"]
    for setting_field in dataclasses.fields(cls):
        spec = spec_of(setting_field)
        facts = [f"`{spec.env}`"] if spec.env else []
        facts += [spec.range_text(), f"default {default_text(setting_field)}"]
        text = f"{spec.doc} ({'; '.join(fact for fact in facts if fact)})"
        lines.append(f"        {setting_field.name}: {text}")
    return "\n".join(lines)


_DURATION = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(ms|s|min)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "min": 60.0, None: 1.0}
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})

# PostgreSQL keeps NAMEDATALEN - 1 bytes of application_name and shows each character
# outside printable ASCII as "?"; libpq cannot send a NUL at all.
NAME_MAX = 63
_PRINTABLE = re.compile(r"[ -~]*")


def check_application_name(name: str, value: object) -> str:
    """``value`` as a plain str if PostgreSQL can show it as given, else ConfigurationError."""
    text = str.__str__(value) if isinstance(value, str) else None  # a plain str, from a subclass
    if text is not None and len(text) <= NAME_MAX and _PRINTABLE.fullmatch(text):
        return text
    raise ConfigurationError(
        f"{name}={shown(value)} is invalid; use a string of at most {NAME_MAX} "
        "characters, printable ASCII only (PostgreSQL shows other characters as '?' and "
        "cannot carry NUL or control characters)"
    )


PGBOUNCER_MODES = ("off", "session", "transaction")


def check_pgbouncer(name: str, value: object) -> str:
    """PgBouncer's ``pool_mode`` in lower case, or ConfigurationError."""
    normalized = str.__str__(value).strip().lower() if isinstance(value, str) else None
    if normalized == "statement":
        raise ConfigurationError(
            f"{name}='statement' is not supported: PgBouncer's statement mode forbids "
            "transactions of more than one statement, and a unit of work is a transaction. "
            "Use pool_mode = transaction in pgbouncer.ini and UOW_PGBOUNCER=transaction"
        )
    if normalized not in PGBOUNCER_MODES:
        raise ConfigurationError(
            f"{name}={shown(value)} is invalid; use one of {', '.join(PGBOUNCER_MODES)} "
            "(PgBouncer's pool_mode, or off for a direct connection)"
        )
    return normalized
