"""The README's quick start runs as written, against an empty database."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).parents[2] / "README.md"
BLOCK = re.compile(r"<!-- quickstart -->\n```python\n(.*?)```\n<!-- /quickstart -->", re.S)
OUTPUT = re.compile(r"It prints:\n\n```text\n(.*?)```", re.S)


def test_quick_start_runs_as_written(empty_url: str, tmp_path: Path) -> None:
    """The README's marked quick-start block prints what the README says, on an empty database."""
    text = README.read_text()
    blocks = BLOCK.findall(text)
    assert len(blocks) == 1, "README.md must mark exactly one quick-start block"
    expected = OUTPUT.search(text)
    assert expected, "README.md must show the quick start's output after 'It prints:'"
    script = tmp_path / "quickstart.py"
    script.write_text(blocks[0])
    env = {k: v for k, v in os.environ.items() if not k.startswith("UOW_")}
    env["DATABASE_URL"] = empty_url
    done = subprocess.run(  # noqa: S603 - our own interpreter and the README we ship
        [sys.executable, str(script)],
        env=env,
        cwd=tmp_path,  # as a user would run it: not importing anything from this checkout
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == expected.group(1)
