"""Each setting's declaration (its Spec) drives validation, from_env and the repr."""

from __future__ import annotations

import dataclasses
import re

import pytest

from uow import ConfigurationError, Settings
from uow._specs import Spec, spec_of

URL = "postgresql://app:hunter2@db.example:5432/shop"
SPECS = {f.name: spec_of(f) for f in dataclasses.fields(Settings)}
NUMBERS = {name: spec for name, spec in SPECS.items() if spec.kind in ("count", "seconds")}


def step(spec: Spec) -> float:
    """The smallest step the test takes past a bound: 1 for counts, 1 ms for durations."""
    return 1 if spec.kind == "count" else 0.001


def inside(spec: Spec) -> list[float]:
    """Values just inside the declared range, and the declared special values."""
    low = spec.low + step(spec) if spec.low_open else spec.low
    return [low, spec.high, *spec.special, *([spec.resolution] if spec.resolution else [])]


def outside(spec: Spec) -> list[float]:
    """Values just outside the declared range (and below the resolution, if any)."""
    below = spec.low if spec.low_open else spec.low - step(spec)
    values = [below, spec.high + step(spec)]
    if spec.special:
        values.append(min(spec.special) - 1)
    if spec.resolution:
        values.append(spec.resolution / 2)
    return [value for value in values if value not in spec.special]


def test_every_setting_is_declared_once() -> None:
    """Every field has a Spec; each environment variable names one setting, UOW_* but the URL."""
    variables = [spec.env for spec in SPECS.values() if spec.env]
    assert len(variables) == len(set(variables))
    assert all(v.startswith("UOW_") for v in variables if v != "DATABASE_URL")
    assert SPECS["pool_pre_ping"].env == "UOW_PRE_PING"  # the one not named after its setting
    assert len(NUMBERS) == 15  # 3 counts, 12 durations


@pytest.mark.parametrize("name", sorted(NUMBERS))
def test_declared_bounds_are_the_bounds_validation_applies(name: str) -> None:
    """Values just inside a setting's declared range are accepted, just outside refused."""
    spec = NUMBERS[name]
    for value in inside(spec):
        assert getattr(Settings(url=URL, **{name: value}), name) == value
    for value in outside(spec):
        with pytest.raises(ConfigurationError, match=rf"^{name}=") as info:
            Settings(url=URL, **{name: value})
        assert f"{spec.high:g}" in str(info.value) or "resolution" in str(info.value)


@pytest.mark.parametrize("name", sorted(NUMBERS))
def test_from_env_errors_name_the_variable(name: str) -> None:
    """A value read from the environment and out of range is reported under its variable."""
    spec = NUMBERS[name]
    assert spec.env is not None
    for value in outside(spec):
        raw = f"{value:g}" if spec.kind == "count" else f"{round(value * 1000, 3)}ms"
        with pytest.raises(ConfigurationError, match=rf"^{spec.env}={re.escape(raw)} is ") as info:
            Settings.from_env({"DATABASE_URL": URL, spec.env: raw})
        assert f" {name}=" not in str(info.value)


def test_from_env_error_reads_like_the_assignment() -> None:
    """UOW_POOL_SIZE=0 is refused as written, with the range to use."""
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env({"DATABASE_URL": URL, "UOW_POOL_SIZE": "0"})
    assert str(info.value) == "UOW_POOL_SIZE=0 is invalid; use an integer from 1 to 1000"
    with pytest.raises(ConfigurationError, match=r"^UOW_POOL_SIZE='abc' is invalid"):
        Settings.from_env({"DATABASE_URL": URL, "UOW_POOL_SIZE": "abc"})
    with pytest.raises(ConfigurationError, match=r"^UOW_APPLICATION_NAME='\\x00' is invalid"):
        Settings.from_env({"DATABASE_URL": URL, "UOW_APPLICATION_NAME": "\x00"})


def test_keyword_errors_still_name_the_setting() -> None:
    """A value passed as a keyword argument is reported under the setting's name."""
    with pytest.raises(ConfigurationError, match=r"^pool_recycle=0 is invalid; .* or -1$"):
        Settings(url=URL, pool_recycle=0)


def test_repr_follows_declaration_order_and_masks_urls() -> None:
    """The repr lists every setting in declaration order, with URLs masked."""
    settings = Settings(url=URL, replica_urls=[URL], engine_options={"echo_pool": True})
    shown = repr(settings)
    positions = [shown.index(f"{name}=") for name in SPECS]
    assert positions == sorted(positions)
    assert "hunter2" not in shown


def test_docstring_lists_every_setting_with_its_variable() -> None:
    """help(Settings) shows each setting with its environment variable and range."""
    assert Settings.__doc__ is not None
    for name, spec in SPECS.items():
        line = next(ln for ln in Settings.__doc__.splitlines() if ln.strip().startswith(name + ":"))
        assert (spec.env or "") in line
        assert spec.range_text() in line
