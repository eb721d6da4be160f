"""`uow doctor` and `uow top` never pass the server's text raw to the terminal."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.conftest import libpq_dsn
from tests.helpers import run_python
from uow._ops.terminal import printable

ATTACK = "\x1b]0;pwned\x07\x1b[2J"


def cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `python -m uow ARGS` with DATABASE_URL=url and no other uow setting."""
    return run_python("-m", "uow", *args, DATABASE_URL=url)


@pytest.fixture
def hostile_session(postgres_url: str, app_name: str) -> Iterator[psycopg.Connection[Any]]:
    """Another session, idle in transaction after a query whose comment holds escape codes."""
    with psycopg.connect(libpq_dsn(postgres_url), application_name=app_name) as conn:
        conn.execute(f"SELECT 1 /* {ATTACK} */")
        yield conn
        conn.rollback()


@pytest.mark.parametrize("command", [["doctor"], ["top", "--iterations", "1"]])
def test_query_text_with_escape_sequences_is_shown_escaped(
    postgres_url: str, hostile_session: psycopg.Connection[Any], command: list[str]
) -> None:
    """Another session's query comment with OSC and CSI sequences reaches the output escaped,
    with no control character left to act on the terminal."""
    result = cli(postgres_url, *command)
    assert result.returncode in (0, 1), result.stderr
    assert "\\x1b]0;pwned\\x07\\x1b[2J" in result.stdout
    assert not [c for c in result.stdout if not c.isprintable() and c != "\n"]


def test_printable_escapes_controls_and_keeps_unicode_text() -> None:
    """C0, C1, DEL and bidi overrides are escaped; accents and CJK stay; escaping is idempotent."""
    text = f"é 日本 {ATTACK} \x9b1m \x7f \u202e\tend"
    shown = printable(text)
    assert shown == "é 日本 \\x1b]0;pwned\\x07\\x1b[2J \\x9b1m \\x7f \\u202e\\tend"
    assert printable(shown) == shown
    assert printable("a\nb", keep_newlines=True) == "a\nb"
