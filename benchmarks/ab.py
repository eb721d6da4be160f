"""Interleaved A/B comparisons of the performance targets, with PASS/MISS per target.

    python -m benchmarks.ab [--targets lean,orm-pre-ping,orm-no-ping,async] [--seconds 10]
    python -m benchmarks.ab --smoke      # CI: a few seconds; exits 1 below 0.8x

A and B run W1 (``UPDATE bench_accounts SET balance = balance + 1 WHERE id = ?``, commit)
in alternating 0.1 s slices, A, B, A, B..., in the same process, from the same client
threads (or asyncio tasks), on pools opened and warmed before the first slice. Each
slice's rate is its completed transactions over the time from its start until its last
client finished; pair *i* is (A's slice *i*, B's slice *i*), and the reported ratio is the
median of the per-pair ratios B/A with their interquartile range. A machine that drifts
(another process taking a core for a second) moves both halves of a pair alike, which
is why this is the fairest comparison on a shared machine; only ratios are reported.

The variants are those of ``benchmarks/variants.py`` (sync) and ``async_bench.py``
(async), so this measures what ``python -m benchmarks.run`` and ``async_bench`` measure.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

ROOT = Path(__file__).resolve().parent.parent
SLICE = 0.1
"""Seconds per slice."""
SMOKE_FLOOR = 0.8
"""``--smoke`` fails below this ratio, whatever the target: CI machines are noisy, and a
unit of work that suddenly costs 25% more than its baseline is a regression, not noise."""
WARMUP_PAIRS = 3
SMOKE_SECONDS = 2.4
"""Measured seconds per comparison in ``--smoke``: 12 pairs, four comparisons, about 10 s."""
ACCOUNTS = 10_000

Rate = Callable[[], float]


@dataclass(frozen=True)
class Target:
    """One comparison of the issue's targets: B's rate over A's, at least ``threshold``."""

    name: str
    a: str
    b: str
    threshold: float | None
    """None: printed for information (INFO), never PASS or MISS."""
    clients: tuple[int, ...]
    smoke_clients: tuple[int, ...] = ()
    """The client counts ``--smoke`` runs (none: not part of the smoke)."""
    kind: Literal["sync", "async"] = "sync"


TARGETS: dict[str, list[Target]] = {
    "lean": [
        Target("lean", "core-prebuilt", "uow-lean", 0.90, (1, 8), (8,)),
        Target("lean", "core-prebuilt-noping", "uow-lean", None, (1, 8)),
    ],
    "orm-pre-ping": [Target("orm-pre-ping", "orm", "uow", 1.05, (1, 8), (8,))],
    "orm-no-ping": [Target("orm-no-ping", "orm-noping", "uow", 1.0, (1, 8), (8,))],
    "async": [
        Target(
            "async",
            "SQLAlchemy AsyncSession",
            "uow-async (session.execute)",
            1.0,
            (1, 8, 32),
            (8,),
            kind="async",
        )
    ],
}
"""By the name ``--targets`` takes."""


# -- the arithmetic -------------------------------------------------------------------------


def pair_ratios(pairs: Sequence[tuple[float, float]]) -> list[float]:
    """B/A of each (A rate, B rate) pair; a pair where A completed nothing is skipped."""
    return [b / a for a, b in pairs if a > 0]


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    """(first quartile, median, third quartile) of ``values`` (at least one)."""
    if not values:
        raise ValueError("no pairs to take a median of: every A slice completed nothing")
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, median, q3


def verdict(ratio: float, threshold: float | None) -> str:
    """PASS at or above ``threshold``, MISS below it; INFO when there is no threshold."""
    if threshold is None:
        return "INFO"
    return "PASS" if ratio >= threshold else "MISS"


@dataclass(frozen=True)
class Comparison:
    """The measured pairs of one target at one client count."""

    target: Target
    clients: int
    pairs: list[tuple[float, float]] = field(repr=False)

    @property
    def ratios(self) -> list[float]:
        return pair_ratios(self.pairs)

    @property
    def quartiles(self) -> tuple[float, float, float]:
        return quartiles(self.ratios)

    @property
    def ratio(self) -> float:
        """The median of the per-pair ratios B/A."""
        return self.quartiles[1]

    @property
    def verdict(self) -> str:
        return verdict(self.ratio, self.target.threshold)

    def line(self) -> str:
        q1, median, q3 = self.quartiles
        bound = f">= {self.target.threshold:.2f}" if self.target.threshold else "(info)"
        return (
            f"{self.verdict:<4}  {self.target.b} / {self.target.a} @ {self.clients} clients: "
            f"{median:.3f} (IQR {q1:.3f}-{q3:.3f}, {len(self.pairs)} pairs) {bound}"
        )


def gross_regressions(results: Sequence[Comparison], floor: float = SMOKE_FLOOR) -> list[str]:
    """The comparisons whose median ratio is below ``floor``, one line each."""
    return [
        f"{r.target.b} / {r.target.a} @ {r.clients}: {r.ratio:.3f} < {floor}"
        for r in results
        if r.target.threshold is not None and r.ratio < floor
    ]


def interleave(
    run_a: Rate, run_b: Rate, pairs: int, warmup: int = WARMUP_PAIRS
) -> list[tuple[float, float]]:
    """``pairs`` (A rate, B rate) pairs, slices alternating A, B, A, B...; warm-up discarded."""
    measured = []
    for i in range(warmup + pairs):
        a = run_a()
        b = run_b()
        if i >= warmup:
            measured.append((a, b))
    return measured


# -- sync: the same client threads run A's slice, then B's ---------------------------------


class Gang:
    """``clients`` threads that run one transaction function for one slice at a time."""

    def __init__(self, clients: int, seed: int = 1) -> None:
        from .variants import WorkerState  # noqa: PLC0415 - keeps the arithmetic import-light

        self._go = threading.Barrier(clients + 1)
        self._done = threading.Barrier(clients + 1)
        self._job: tuple[Callable[[WorkerState], None], float] | None = None
        self._counts = [0] * clients
        self._finished = [0.0] * clients
        self._errors: list[BaseException] = []
        self._threads = [
            threading.Thread(
                target=self._work, args=(i, WorkerState(seed + i, ACCOUNTS)), daemon=True
            )
            for i in range(clients)
        ]
        for thread in self._threads:
            thread.start()

    def _work(self, index: int, state: object) -> None:
        while True:
            self._go.wait()
            job = self._job
            if job is None:
                return
            transaction, deadline = job
            count = 0
            try:
                while time.perf_counter() < deadline:
                    transaction(state)  # type: ignore[arg-type]
                    count += 1
            except BaseException as exc:  # noqa: BLE001 - re-raised by run() in the main thread
                self._errors.append(exc)
            self._counts[index] = count
            self._finished[index] = time.perf_counter()
            self._done.wait()

    def run(self, transaction: Callable[..., None], seconds: float = SLICE) -> float:
        """Transactions per second of every thread running ``transaction`` for ``seconds``."""
        started = time.perf_counter()
        self._job = (transaction, started + seconds)
        self._go.wait()
        self._done.wait()
        if self._errors:
            raise self._errors[0]
        return sum(self._counts) / (max(self._finished) - started)

    def close(self) -> None:
        self._job = None
        self._go.wait()
        for thread in self._threads:
            thread.join()


@contextmanager
def sync_transactions(url: str, names: set[str], pool_size: int) -> Iterator[dict[str, Rate]]:
    """W1 of each named variant (``-noping``: pre-ping off), its pool open and warm."""
    from .variants import TRANSACTION_VARIANTS, Config  # noqa: PLC0415

    stacks = {}
    try:
        for name in sorted(names):
            base = name.removesuffix("-noping")
            config = Config(url, pool_size, name == base, f"ab-{name}", ACCOUNTS)
            stacks[name] = stack = TRANSACTION_VARIANTS[base].stack(config)
            stack.warm()
        yield {name: stack.transaction("W1") for name, stack in stacks.items()}  # type: ignore[misc]
    finally:
        for stack in stacks.values():
            stack.close()


def run_sync(
    url: str, targets: list[Target], pairs: int, pool_size: int, smoke: bool
) -> list[Comparison]:
    names = {n for t in targets for n in (t.a, t.b)}
    results = []
    with sync_transactions(url, names, pool_size) as transactions:
        for clients in sorted({c for t in targets for c in _clients(t, smoke)}):
            gang = Gang(clients)
            try:
                for target in (t for t in targets if clients in _clients(t, smoke)):
                    a, b = transactions[target.a], transactions[target.b]  # type: ignore[index]
                    measured = interleave(
                        lambda a=a, g=gang: g.run(a), lambda b=b, g=gang: g.run(b), pairs
                    )
                    results.append(Comparison(target, clients, measured))
                    print(results[-1].line(), flush=True)
            finally:
                gang.close()
    return results


# -- async: the same number of tasks, one event loop ----------------------------------------


async def _run_async(
    url: str, targets: list[Target], pairs: int, pool_size: int, smoke: bool
) -> list[Comparison]:
    from .async_bench import run_point, variants  # noqa: PLC0415

    transactions, close = await variants(url, pool_size)
    results = []
    try:
        for target in targets:
            a, b = transactions[target.a], transactions[target.b]
            for clients in _clients(target, smoke):
                measured = []
                for i in range(WARMUP_PAIRS + pairs):
                    rate_a = await run_point(a, clients, SLICE)
                    rate_b = await run_point(b, clients, SLICE)
                    if i >= WARMUP_PAIRS:
                        measured.append((rate_a, rate_b))
                results.append(Comparison(target, clients, measured))
                print(results[-1].line(), flush=True)
    finally:
        await close()
    return results


def _clients(target: Target, smoke: bool) -> tuple[int, ...]:
    return target.smoke_clients if smoke else target.clients


# -- command line ----------------------------------------------------------------------------


def report_header(command: str, server: str) -> list[str]:
    """The lines that say how a table was made: the command, uow's commit, date, server."""
    try:
        commit = subprocess.run(  # noqa: S603 - a fixed git command, no input
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],  # noqa: S607
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return [
        f"Command: `{command}`  ",
        f"uow at {commit}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {server}; "
        f"{os.cpu_count()} CPUs shared by the client and the server.  ",
    ]


def report(results: Sequence[Comparison], command: str, server: str, pool_sizes: str) -> str:
    """The Markdown table of ``results``."""
    lines = [
        "# Interleaved A/B: the CPU targets",
        "",
        *report_header(command, server),
        f"W1 in alternating {SLICE:g} s slices (A, B, A, B...) from the same clients, {pool_sizes};"
        " ratio = median of the per-pair ratios B/A, with the interquartile range.",
        "",
        "| target | B / A | clients | ratio | IQR | pairs | target | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        q1, median, q3 = r.quartiles
        bound = f">= {r.target.threshold:.2f}" if r.target.threshold else "-"
        lines.append(
            f"| {r.target.name} | {r.target.b} / {r.target.a} | {r.clients} | {median:.3f} "
            f"| {q1:.3f}-{q3:.3f} | {len(r.pairs)} | {bound} | {r.verdict} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.ab", description=(__doc__ or "").split("\n\n")[0]
    )
    add = parser.add_argument
    add(
        "--targets",
        default=",".join(TARGETS),
        help=f"comma-separated, of {','.join(TARGETS)} (all)",
    )
    add(
        "--seconds",
        type=float,
        help=f"measured seconds per comparison, A and B (10; smoke {SMOKE_SECONDS:g})",
    )
    add("--smoke", action="store_true", help="CI: 8 clients only, short; exit 1 below 0.8x")
    add("--pool-size", type=int, default=20, help="sync pools (20, as benchmarks.run)")
    add("--async-pool-size", type=int, default=10, help="async pools (10, as async_bench)")
    add("--url", help="a server to use instead of a throwaway one (bench_accounts is recreated)")
    add("--out", type=Path, help="where ab.md goes (benchmarks/results; smoke: nowhere)")
    args = parser.parse_args(argv)
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if unknown := set(args.targets) - set(TARGETS):
        parser.error(f"unknown targets {sorted(unknown)}; choose from {','.join(TARGETS)}")
    args.seconds = args.seconds or (SMOKE_SECONDS if args.smoke else 10.0)
    if args.seconds < 2 * SLICE:
        parser.error(f"--seconds must be at least {2 * SLICE:g} (one pair of slices)")
    if args.out is None and not args.smoke:
        args.out = ROOT / "benchmarks" / "results"
    return args


@contextmanager
def _server(url: str | None) -> Iterator[tuple[str, str]]:
    if url:
        yield url, "the server given by --url"
        return
    from uow.testing import EmbeddedPostgres  # noqa: PLC0415 - needs uow[testing]

    with EmbeddedPostgres(max_connections=200) as pg:
        yield pg.url, f"throwaway EmbeddedPostgres {pg.server_version() // 10000} (fsync off)"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from .models import create_schema  # noqa: PLC0415
    from .variants import Config  # noqa: PLC0415

    selected = [t for name in args.targets for t in TARGETS[name]]
    if args.smoke:
        selected = [t for t in selected if t.smoke_clients]
    pairs = max(1, round(args.seconds / (2 * SLICE)))
    results: list[Comparison] = []
    with _server(args.url) as (url, server):
        create_schema(Config(url, 1, False, "ab", ACCOUNTS).conninfo, ACCOUNTS)
        sync = [t for t in selected if t.kind == "sync"]
        if sync:
            results += run_sync(url, sync, pairs, args.pool_size, args.smoke)
        if asynchronous := [t for t in selected if t.kind == "async"]:
            results += asyncio.run(
                _run_async(url, asynchronous, pairs, args.async_pool_size, args.smoke)
            )
    command = "python -m benchmarks.ab " + " ".join(argv if argv is not None else sys.argv[1:])
    text = report(
        results,
        command.strip(),
        server,
        f"pool size {args.pool_size} (sync), {args.async_pool_size} (async)",
    )
    print()
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "ab.md").write_text(text)
    if args.smoke and (regressions := gross_regressions(results)):
        print(f"gross regression (below {SMOKE_FLOOR}x):", *regressions, sep="\n  ")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
