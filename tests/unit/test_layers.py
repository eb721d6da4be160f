"""The layers of uow/ stay layers: which package may import which.

- ``uow/*.py``, the request path (settings, database, unit of work, repositories, async,
  retry) and the public modules, may import the engine's internals, never the operator
  tools;
- ``uow/_engine/``, the engine's internals (pool, liveness, classification, timeouts,
  metrics, replicas...), imports only itself, settings and errors;
- ``uow/_ops/``, the operator tools and the CLI (doctor, top, activity), may import
  anything; only ``uow/__main__.py`` imports it.
- procrastinate is optional (``uow[jobs]``): only ``uow/jobs.py`` imports it when loaded;
  elsewhere it is imported inside the functions that defer a job.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import uow

PACKAGE = Path(uow.__file__).parent
ENGINE_MAY_IMPORT = ("uow._engine", "uow._settings", "uow._errors")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every uow module a file imports, relative imports resolved, TYPE_CHECKING included."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            found.add(target)
            # `from . import x` imports the module x
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return {module for module in found if module == "uow" or module.startswith("uow.")}


def files(*folders: str) -> list[Path]:
    return [path for folder in folders for path in sorted((PACKAGE / folder).glob("*.py"))]


def within(module: str, *prefixes: str) -> bool:
    return any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)


@pytest.mark.parametrize("path", files("_engine"), ids=lambda p: p.name)
def test_the_engine_imports_only_itself_settings_and_errors(path: Path) -> None:
    """uow/_engine/ depends on nothing above it but settings and errors."""
    wrong = {m for m in imports(path) if not within(m, *ENGINE_MAY_IMPORT)}
    assert not wrong, f"{module_name(path)} imports {sorted(wrong)}"


@pytest.mark.parametrize(
    "path", [*files("."), *files("_engine"), *files("testing")], ids=lambda p: p.name
)
def test_only_the_entry_point_imports_the_operator_tools(path: Path) -> None:
    """The request path, the engine and uow.testing never import uow/_ops/."""
    if path.name == "__main__.py":
        return
    wrong = {m for m in imports(path) if within(m, "uow._ops")}
    assert not wrong, f"{module_name(path)} imports {sorted(wrong)}"


def test_import_uow_loads_no_operator_tool() -> None:
    """`import uow` (and uow.testing) loads neither doctor, top, activity nor the CLI."""
    code = (
        "import sys, uow, uow.testing, uow.migrations; "
        "print(sorted(m for m in sys.modules if m.startswith('uow._ops')))"
    )
    result = subprocess.run(  # noqa: S603 - this interpreter, our own code
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def module_level_imports(path: Path) -> set[str]:
    """The modules a file imports when it is loaded (not in functions, not TYPE_CHECKING)."""
    found: set[str] = set()
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level:
            found.add(node.module or "")
    return found


@pytest.mark.parametrize(
    "path", [*files("."), *files("_engine"), *files("testing")], ids=lambda p: p.name
)
def test_only_uow_jobs_imports_procrastinate_when_loaded(path: Path) -> None:
    """The core (UnitOfWork, AsyncUnitOfWork, the fake) loads without procrastinate."""
    if path.name == "jobs.py" and path.parent == PACKAGE:
        return
    wrong = {m for m in module_level_imports(path) if within(m, "procrastinate", "psycopg_pool")}
    assert not wrong, f"{module_name(path)} imports {sorted(wrong)} when loaded"
