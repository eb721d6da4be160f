"""A password in the URL never shows: every CLI, with working and failing URLs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import make_url

ROOT = Path(__file__).resolve().parents[2]
SECRET = "S3cr3t!pw"
# The password, and what is left of it when a URL is cut at its unencoded "@".
LEAKS = ("S3cr3t", "S3cr3t%21pw", "pw@#")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def urls(postgres_url: str) -> dict[str, str]:
    """URLs carrying the password in each way libpq takes one, reachable or not."""
    url = make_url(postgres_url)
    user, port, db, dead = url.username, url.port, url.database, closed_port()
    return {
        "query": f"postgresql://{user}@127.0.0.1:{port}/{db}?password={SECRET}",
        "multi_host": f"postgresql://{user}@127.0.0.1:{dead},127.0.0.1:{port}/{db}"
        f"?password={SECRET}&application_name=x",
        "wrong_host": f"postgresql://{user}@127.0.0.1:{dead}/{db}?password={SECRET}",
        "unencoded_at": f"postgresql://{user}:{SECRET}@#@127.0.0.1:{port}/{db}",
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
    url = urls(postgres_url)[kind]
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
        for leak in LEAKS:
            assert leak not in out + err, f"{name} ({kind}) printed the password: {out}{err}"
        if kind == "unencoded_at":
            assert "percent-encode" in err, f"{name}: {err}"
        if kind == "multi_host" and name == "doctor":
            assert "Hosts (in the order libpq tries them)" in out, err
