"""A password in the URL never shows: every CLI, with working and failing URLs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest
from sqlalchemy import make_url

ROOT = Path(__file__).resolve().parents[2]
SECRET = "S3cr3t!pw"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def urls(postgres_url: str) -> tuple[str, dict[str, str]]:
    """The password, and URLs carrying it in each way libpq takes one, reachable or not."""
    url = make_url(postgres_url)
    # The server's own password when it asks for one: the URLs must get in.
    secret = url.password or SECRET
    user, port, db, dead = url.username, url.port, url.database, closed_port()
    query = quote(secret, safe="")
    return secret, {
        "query": f"postgresql://{user}@127.0.0.1:{port}/{db}?password={query}",
        "multi_host": f"postgresql://{user}@127.0.0.1:{dead},127.0.0.1:{port}/{db}"
        f"?password={query}&application_name=x",
        "wrong_host": f"postgresql://{user}@127.0.0.1:{dead}/{db}?password={query}",
        "unencoded_at": f"postgresql://{user}:{secret}@#@127.0.0.1:{port}/{db}",
    }


COMMANDS = {
    "doctor": ["-m", "uow", "doctor", "--url", "{url}"],
    "doctor --json": ["-m", "uow", "doctor", "--json", "--url", "{url}"],
    "top": ["-m", "uow", "top", "--iterations", "1", "--url", "{url}"],
    "migrate": ["-m", "uow", "migrate", "--url", "{url}", "current"],
    "example app": ["-m", "examples.bank", "audit"],
}


@pytest.mark.parametrize("kind", ["query", "multi_host", "wrong_host", "unencoded_at"])
def test_no_cli_output_shows_the_password(postgres_url: str, kind: str) -> None:
    """uow doctor, top, migrate and the example's CLI never print the URL's password."""
    secret, found = urls(postgres_url)
    url = found[kind]
    # The password, percent-encoded too, and the tail of one cut at an unencoded "@".
    leaks = (secret, quote(secret, safe=""), f"{secret[-3:]}@#")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UOW_", "DATABASE_URL"))}
    env["DATABASE_URL"] = url
    runs = {
        name: subprocess.Popen(  # noqa: S603 - our own interpreter and modules
            [sys.executable, *(a.format(url=url) for a in args)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, args in COMMANDS.items()
    }
    for name, run in runs.items():
        out, err = run.communicate(timeout=120)
        assert out or err, f"{name} printed nothing"
        for leak in leaks:
            assert leak not in out + err, f"{name} ({kind}) printed the password: {out}{err}"
        if kind == "unencoded_at":
            assert "percent-encode" in err, f"{name}: {err}"
        if kind == "multi_host" and name == "doctor":
            assert "Hosts (in the order libpq tries them)" in out, err
