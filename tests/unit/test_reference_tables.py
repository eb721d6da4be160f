"""The reference's settings and metrics tables are generated from the code and kept current."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from uow import ConfigurationError, Settings
from uow._engine.stats import METRICS

ROOT = Path(__file__).resolve().parents[2]
GENERATE = ROOT / "docs" / "generate.py"


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_generate", GENERATE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def row(page: str, first_cell: str) -> list[str]:
    """The cells of the table row whose first cell is ``first_cell``."""
    line = next(ln for ln in page.splitlines() if ln.startswith(f"| {first_cell} |"))
    return [cell.strip() for cell in line.strip("|").split(" | ")]


def test_committed_tables_match_the_code() -> None:
    """`python docs/generate.py --check` passes: the committed pages are what the code declares."""
    done = subprocess.run(  # noqa: S603 - our own interpreter and script
        [sys.executable, str(GENERATE), "--check"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr


def test_check_names_a_stale_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--check exits 1 and names the page when a committed table differs from the code."""
    module = generator()
    page = tmp_path / "docs" / "reference" / "settings.md"
    page.parent.mkdir(parents=True)
    page.write_text(module.settings_page().replace("over 0 to 3600", "> 0"))
    monkeypatch.setattr(module, "ROOT", tmp_path)
    monkeypatch.setattr(module, "PAGES", {page: module.settings_page})
    assert module.main(["--check"]) == 1
    assert page.read_text().count("> 0") == 1  # --check writes nothing
    assert module.main([]) == 0
    assert module.main(["--check"]) == 0


def test_settings_table_shows_the_ranges_validation_applies() -> None:
    """The drifted rows are right: pool_timeout is (0, 3600], pool_recycle 1-86400 or -1."""
    page = generator().settings_page()
    assert row(page, "`pool_timeout`")[1:4] == [
        "`UOW_POOL_TIMEOUT`",
        "5",
        "seconds, over 0 to 3600",
    ]
    assert row(page, "`pool_recycle`")[3] == "seconds, 1 to 86400, or -1 for never"
    assert row(page, "`pool_pre_ping`")[1] == "`UOW_PRE_PING`"
    Settings(url="postgresql://h/db", pool_timeout=3600, pool_recycle=-1)
    for bad in ({"pool_timeout": 0}, {"pool_timeout": 3600.001}, {"pool_recycle": 0.5}):
        with pytest.raises(ConfigurationError):
            Settings(url="postgresql://h/db", **bad)


def test_metrics_table_has_every_field_and_its_prometheus_name() -> None:
    """Every PoolStats field has a row; counters show prometheus_client's _total name."""
    page = generator().metrics_page()
    for name, declared in METRICS.items():
        cells = row(page, f"`{name}`")
        assert cells[1:4] == [declared.kind, declared.unit, declared.doc]
    assert row(page, "`requests_timeouts`")[5] == "`uow_pool_timeouts_total`"
    assert row(page, "`pool_available`")[5] == '`uow_pool_connections{state="idle"}`'
