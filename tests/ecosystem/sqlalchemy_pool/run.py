"""Run SQLAlchemy's own pool tests against uow's pools; exit 1 if uow breaks one.

``.ci/run`` runs ``python tests/ecosystem/sqlalchemy_pool/run.py``. It:

1. fetches the source release of the installed SQLAlchemy with pip into a temporary
   directory (never into the repository) and unpacks its tests and pytest plugin;
2. runs the tests below with SQLAlchemy's own pytest configuration and plugin, against
   the installed SQLAlchemy, twice and side by side (a database each): on the stock
   pools, and with uow's swapped in for ``QueuePool`` and ``AsyncAdaptedQueuePool``
   (uow_pool_swap.py);
3. fails if a test that passed on the stock pools does not pass on uow's, unless it is a
   designed difference listed below with its reason, and fails if a listed test passes
   (the list went stale). A test that fails on uow's pools is run once more first, on
   its own: the machine may be busy, and some of SQLAlchemy's tests are timed.

The tests: test/engine/test_pool.py and test_logging.py's PoolLoggingTest use a mock
DBAPI. test/engine/test_reconnect.py (mock tests, and RealReconnectTest,
RealPrePingEventHandlerTest, PrePingRealTest, ...) and the asyncio engine and
cancellation tests run on a throwaway EmbeddedPostgres, through psycopg and
psycopg_async; they cut connections on the client side, so the server is never
restarted. The server's URLs go to the run in a test.cfg file, not on a command line.
``--sdist sqlalchemy-X.tar.gz`` skips the download.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from collections import Counter
from importlib import metadata
from pathlib import Path

from sqlalchemy import make_url

from uow.testing import EmbeddedPostgres

HERE = Path(__file__).resolve().parent

TESTS = [
    "test/engine/test_pool.py",
    "test/engine/test_logging.py::PoolLoggingTest",
    "test/engine/test_reconnect.py",
    "test/ext/asyncio/test_engine.py::AsyncEngineTest",
    "test/ext/asyncio/test_engine.py::AsyncCreatePoolTest",
    "test/ext/asyncio/test_engine.py::AsyncEventTest",
    "test/ext/asyncio/test_engine.py::PoolRegenTest",
    "test/ext/asyncio/test_cancellation.py",
]

# Node ids (as the stock run names them, see normalized()) that pass on SQLAlchemy's
# pools and fail on uow's by design, each with the reason.
DESIGNED_DIFFERENCES = {
    "test/ext/asyncio/test_engine.py::AsyncEngineTest_postgresql+psycopg_async"
    "::test_cant_use_async_pool_w_create_engine": (
        "expects the message to name AsyncAdaptedQueuePool; the same ArgumentError names "
        "the class actually given, uow's AsyncQueuePool"
    ),
}

# Test ids carry the pool class's name and the server's version; uow's runs are
# compared under the stock names, and the list above holds for any server version.
_RENAMES = [
    (re.compile(r"\bFairQueuePool\b"), "QueuePool"),
    (re.compile(r"\bAsyncQueuePool\b"), "AsyncAdaptedQueuePool"),
    (re.compile(r"(_postgresql\+psycopg(?:_async)?)_[0-9_]+(?=::)"), r"\1"),
]


def normalized(node: str) -> str:
    """The node id with uow's class names and the server version taken out."""
    for pattern, replacement in _RENAMES:
        node = pattern.sub(replacement, node)
    return node


def selectable(node: str) -> str:
    """The node id as a command line can select it: SQLAlchemy names the classes it makes
    per server ("AsyncEngineTest_postgresql+psycopg_18_6") at collection, after selection."""
    return re.sub(r"_postgresql\+psycopg(?:_async)?_[0-9_]+::", "::", node)


def download_sdist(into: Path) -> Path:
    """Download the installed SQLAlchemy's source release; returns the archive."""
    version = metadata.version("sqlalchemy")
    # --no-binary for sqlalchemy only: with ":all:" pip would also build the sdist's
    # build requirements (Cython) from source just to read its metadata, for minutes.
    pip = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"]
    subprocess.run(  # noqa: S603 (our own interpreter, no shell)
        [*pip, "--no-binary", "sqlalchemy", "--dest", str(into), f"sqlalchemy=={version}"],
        check=True,
    )
    (archive,) = into.glob("*.tar.gz")  # "SQLAlchemy-2.0.x.tar.gz" before 2.1
    return archive


def unpack(archive: Path, into: Path, urls: dict[str, str]) -> Path:
    """Unpack the tests and the pytest plugin; name the servers in test.cfg; returns the root."""
    with tarfile.open(archive) as tar:
        root = tar.getmembers()[0].name.split("/")[0]
        wanted = (f"{root}/test/", f"{root}/lib/sqlalchemy/testing/plugin/")
        members = [
            member
            for member in tar.getmembers()
            if member.name.startswith(wanted)
            or member.name in (f"{root}/pyproject.toml", f"{root}/setup.cfg")
        ]
        tar.extractall(into, members=members, filter="data")
    # SQLAlchemy's plugin reads setup.cfg then test.cfg (ConfigParser: "%" doubled).
    lines = ["[db]", *(f"{name} = {url.replace('%', '%%')}" for name, url in urls.items())]
    (into / root / "test.cfg").write_text("\n".join(lines) + "\n")
    return into / root


class Run:
    """One pytest run of SQLAlchemy's tests in a subprocess, its output kept in a file."""

    def __init__(
        self, name: str, source: Path, dbs: list[str], tests: list[str], *, swapped: bool
    ) -> None:
        self.outcomes_file = source / f"outcomes-{name}.json"
        self.log = source / f"pytest-{name}.log"
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
            "UOW_SWAP_POOLS": "1" if swapped else "0",
            "UOW_OUTCOMES": str(self.outcomes_file),
        }
        # -s: SQLAlchemy's conftest then leaves the unpacked lib/ off sys.path, so the tests
        # import the installed SQLAlchemy, the one uow runs on. -c and --rootdir keep uow's
        # pytest configuration (filterwarnings = error, testpaths) out of this run.
        pytest = [sys.executable, "-s", "-m", "pytest", "-c", "pyproject.toml", "--rootdir", "."]
        plugins = ["-p", "uow_pool_swap", "-p", "no:cacheprovider"]
        with self.log.open("wb") as out:
            self._process = subprocess.Popen(  # noqa: S603 (our own interpreter, no shell)
                [*pytest, *plugins, "-q", *(arg for db in dbs for arg in ("--db", db)), *tests],
                cwd=source,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def outcomes(self) -> dict[str, str]:
        """Wait for the run; returns {node id: outcome}, node ids as pytest names them."""
        self._process.wait()  # judged by the comparison, not by pytest's exit status
        if not self.outcomes_file.exists():
            sys.stdout.write(self.log.read_text())
            status = self._process.returncode
            raise SystemExit(f"SQLAlchemy's tests did not run (pytest exit status {status})")
        outcomes: dict[str, str] = json.loads(self.outcomes_file.read_text())
        return outcomes


def compare(stock: dict[str, str], ours: dict[str, str]) -> list[str]:
    """What is wrong with uow's run (normalized node ids), one line each; empty if nothing."""
    passed = {node for node, outcome in stock.items() if outcome == "passed"}
    problems = []
    if len(passed) < 200:  # a broken download or harness must not pass quietly
        problems.append(f"only {len(passed)} tests passed on the stock pools")
    for node in sorted(passed - set(DESIGNED_DIFFERENCES)):
        if ours.get(node) != "passed":
            problems.append(f"{node}: {ours.get(node, 'not run')} on uow's pools")
    for node in sorted(DESIGNED_DIFFERENCES):
        if node not in passed:
            problems.append(f"{node}: listed as a designed difference, but did not pass on stock")
        elif ours.get(node) == "passed":
            problems.append(f"{node}: listed as a designed difference, but passes: unlist it")
    return problems


def main() -> int:
    """Fetch, run on stock and on uow's pools, compare; prints the counts."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sdist", type=Path, help="a downloaded sqlalchemy-X.tar.gz to use")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="uow-sqlalchemy-") as tmp, EmbeddedPostgres() as pg:
        # One database per run: the two runs go side by side (a minute instead of two),
        # and the tests create tables of the same names.
        urls = {}
        for run in ("stock", "uow"):
            url = make_url(pg.create_database(f"sqlalchemy_{run}"))
            for driver in ("psycopg", "psycopg_async"):
                engine_url = url.set(drivername=f"postgresql+{driver}")
                urls[f"{run}_{driver}"] = engine_url.render_as_string(hide_password=False)
        source = unpack(args.sdist or download_sdist(Path(tmp)), Path(tmp), urls)
        dbs = {run: [name for name in urls if name.startswith(run)] for run in ("stock", "uow")}
        print(f"== SQLAlchemy's tests on its stock pools and on uow's: {' '.join(TESTS)}")
        stock_run = Run("stock", source, dbs["stock"], TESTS, swapped=False)
        uow_run = Run("uow", source, dbs["uow"], TESTS, swapped=True)
        ours = uow_run.outcomes()
        sys.stdout.write(uow_run.log.read_text())
        stock = {normalized(node): outcome for node, outcome in stock_run.outcomes().items()}
        failed_once = [
            node
            for node, outcome in ours.items()
            if outcome != "passed"
            and stock.get(normalized(node)) == "passed"
            and normalized(node) not in DESIGNED_DIFFERENCES
        ]
        if failed_once:
            print(f"== once more on uow's pools: the {len(failed_once)} that failed", flush=True)
            retried = list(dict.fromkeys(selectable(node) for node in failed_once))
            again = Run("uow-again", source, dbs["uow"], retried, swapped=True)
            ours.update(again.outcomes())
            sys.stdout.write(again.log.read_text())
    flaky = [normalized(node) for node in failed_once if ours[node] == "passed"]
    ours = {normalized(node): outcome for node, outcome in ours.items()}
    problems = compare(stock, ours)
    tally, ours_tally = Counter(stock.values()), Counter(ours.values())
    print(
        f"== SQLAlchemy {metadata.version('sqlalchemy')}'s pool tests: "
        f"{tally['passed']} passed on its stock pools ({tally['skipped']} skipped, "
        f"{tally['failed']} failed); {ours_tally['passed']} passed on uow's; "
        f"{len(DESIGNED_DIFFERENCES)} designed differences"
    )
    for node, reason in DESIGNED_DIFFERENCES.items():
        print(f"   designed difference: {node}: {reason}")
    for node in flaky:
        print(f"   failed once on uow's pools, passed when run again: {node}")
    for problem in problems:
        print(f"FAILED {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
