"""Where a unit of work's microseconds go: uow, SQLAlchemy's ORM and Core, psycopg, the server.

    python -m benchmarks.profile [--paths orm,lean,...] [--units 4000] [--rounds 3]
                                 [--profiler sample|cprofile]

One client (a thread, or one asyncio task), W1 from ``variants.py`` / ``async_bench.py``:
``orm`` is a ``UnitOfWork`` with a repository (``get``, ``balance += 1``, commit),
``lean`` is ``update_where``; ``async-orm``, ``async-lean`` and ``async-execute``
(``unit.session.execute(update)``) the same on ``AsyncUnitOfWork``. The references, plain
SQLAlchemy written as in ``benchmarks.run``: ``plain-orm`` (``sessionmaker.begin()``,
``session.get``, ``pool_pre_ping=True``), ``core-prebuilt`` (``engine.begin()`` and an
UPDATE built once, ``pool_pre_ping=True``) and ``async-plain`` (``AsyncSession``, the
same statement as ``async-execute``). In each of ``--rounds`` rounds every path, taking
turns, runs two blocks of ``--units`` units: one unprofiled, which gives the real
wall-clock and CPU microseconds per unit, and one profiled, which gives the shares.

- The profiler: ``sample`` (default) takes a sample of the running Python function at
  every tick of process CPU (SIGPROF), about 1% overhead; ``cprofile`` times every call
  on the thread's CPU clock, which inflates the client's CPU several times over, more for
  code made of many small Python calls (SQLAlchemy) than for code that calls into C.
- Each function's own CPU is attributed by the file it lives in: ``uow/``;
  ``sqlalchemy/orm``; the rest of ``sqlalchemy/`` (engine, sql, pool, event, util,
  dialects: "Core"); asyncio and the greenlet bridge (``sqlalchemy/ext/asyncio``,
  ``sqlalchemy/util/concurrency``, greenlet, ``asyncio``, ``selectors``); ``psycopg*/``;
  everything else (the standard library, the benchmark's own function). Time in C (a
  built-in, psycopg's Cython) goes to the Python function that called it.
- The shares are scaled to the unprofiled client-thread CPU per unit, so the totals are
  measured and only the split is estimated ("profiled/plain" shows the profiler's cost).
- "other threads" is the process's CPU beyond the client thread's (uow's watchdog and
  monitors, the pool's helpers); "server" is the rest of the wall-clock time: the client
  blocked waiting for PostgreSQL's answers (and, on a busy machine, for a CPU).

Writes ``benchmarks/results/profile.md`` (``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import pstats
import re
import signal
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Self

from .ab import ACCOUNTS, ROOT, _server, report_header

CATEGORIES = (
    "uow",
    "SQLAlchemy ORM",
    "SQLAlchemy Core",
    "asyncio + greenlet",
    "psycopg",
    "other Python",
)
SYNC_PATHS = {
    "orm": ("uow", "W1"),
    "lean": ("uow-lean", "W1"),
    "plain-orm": ("orm", "W1"),
    "core-prebuilt": ("core-prebuilt", "W1"),
}
"""Path -> (variant of ``variants.py``, workload); the plain ones are the references."""
ASYNC_PATHS = {
    "async-orm": "uow-async (ORM get + modify)",
    "async-lean": "uow-async (update_where)",
    "async-execute": "uow-async (session.execute)",
    "async-plain": "SQLAlchemy AsyncSession",
}
"""Path -> variant of ``async_bench.py``."""
PATHS = (*SYNC_PATHS, *ASYNC_PATHS)

# (substring of the file path, category), first match wins; paths use "/" on POSIX.
_RULES = (
    ("/sqlalchemy/ext/asyncio/", "asyncio + greenlet"),
    ("/sqlalchemy/util/concurrency", "asyncio + greenlet"),
    ("/sqlalchemy/util/_concurrency", "asyncio + greenlet"),
    ("/greenlet/", "asyncio + greenlet"),
    ("/asyncio/", "asyncio + greenlet"),
    ("/selectors.py", "asyncio + greenlet"),
    ("/sqlalchemy/orm/", "SQLAlchemy ORM"),
    ("/sqlalchemy/", "SQLAlchemy Core"),
    ("/psycopg/", "psycopg"),
    ("/psycopg_binary/", "psycopg"),
    ("/psycopg_c/", "psycopg"),
    ("/psycopg_pool/", "psycopg"),
)


def category(filename: str, uow_dir: str) -> str:
    """The category of code defined in ``filename``."""
    if filename.startswith(uow_dir):
        return "uow"
    for fragment, name in _RULES:
        if fragment in filename:
            return name
    return "other Python"


Func = tuple[str, int, str]


def attribute(stats: dict[Func, Any], uow_dir: str) -> tuple[Counter[str], Counter[Func]]:
    """Own time by category, and by Python function (built-ins folded into their callers).

    ``stats`` is ``pstats.Stats(...).stats``: ``{func: (cc, nc, tottime, cumtime,
    callers)}``, callers mapping each caller to the same tuple for that call edge.
    """
    by_category: Counter[str] = Counter()
    by_function: Counter[Func] = Counter()
    for func, (_, _, tottime, _, callers) in stats.items():
        if func[0] != "~":
            by_category[category(func[0], uow_dir)] += tottime
            by_function[func] += tottime
            continue
        # A built-in: cProfile knows which Python functions called it and for how long.
        edges = {c: e[2] for c, e in callers.items() if c[0] != "~"}
        spent = sum(edges.values())
        if not edges or spent <= 0:
            by_category["other Python"] += tottime
            continue
        for caller, edge in edges.items():
            share = tottime * edge / spent
            by_category[category(caller[0], uow_dir)] += share
            by_function[caller] += share
    return by_category, by_function


@dataclass
class Sample:
    """One unprofiled block: seconds of wall clock, client-thread CPU and process CPU."""

    units: int
    wall: float
    thread_cpu: float
    process_cpu: float

    def per_unit(self, seconds: float) -> float:
        return seconds / self.units * 1e6


@dataclass
class PathProfile:
    path: str
    samples: list[Sample]
    profiled_cpu: float
    """Client-thread CPU seconds per unit under the profiler (median of the rounds)."""
    by_category: Counter[str]
    by_function: Counter[Func]

    def median(self, attr: str) -> float:
        return statistics.median(s.per_unit(getattr(s, attr)) for s in self.samples)

    def span(self, attr: str) -> str:
        values = [s.per_unit(getattr(s, attr)) for s in self.samples]
        return f"{min(values):.0f}-{max(values):.0f}"

    def breakdown(self) -> dict[str, float]:
        """µs per unit by category, scaled to the unprofiled client CPU; then threads, server."""
        cpu = self.median("thread_cpu")
        total = sum(self.by_category.values()) or 1.0
        rows = {name: cpu * self.by_category[name] / total for name in CATEGORIES}
        rows["other threads"] = max(0.0, self.median("process_cpu") - cpu)
        rows["server"] = max(0.0, self.median("wall") - self.median("process_cpu"))
        return rows


class _Clock:
    """Wall clock, client-thread CPU and process CPU, read together."""

    def __init__(self) -> None:
        self.wall, self.thread, self.process = (
            time.perf_counter(),
            time.thread_time(),
            time.process_time(),
        )

    def sample(self, units: int) -> Sample:
        return Sample(
            units,
            time.perf_counter() - self.wall,
            time.thread_time() - self.thread,
            time.process_time() - self.process,
        )


class Sampler:
    """A sampling profiler: every ``interval`` s of process CPU (SIGPROF), the Python
    function running in the main thread gets one sample.

    A signal handler runs between bytecodes, so while C code runs (a built-in, psycopg's
    Cython) the sample goes to the Python function that called it, as ``attribute``
    folds built-ins into their callers. Costs about 1% at 1 ms; main thread only.
    """

    def __init__(self, interval: float = 0.001) -> None:
        self.interval = interval
        self.samples: Counter[Func] = Counter()

    def _sample(self, signum: int, frame: FrameType | None) -> None:
        if frame is not None:
            code = frame.f_code
            self.samples[code.co_filename, code.co_firstlineno, code.co_name] += 1

    def __enter__(self) -> Self:
        self._previous = signal.signal(signal.SIGPROF, self._sample)
        signal.setitimer(signal.ITIMER_PROF, self.interval, self.interval)
        return self

    def __exit__(self, *exc_info: object) -> None:
        signal.setitimer(signal.ITIMER_PROF, 0, 0)
        signal.signal(signal.SIGPROF, self._previous)


def profiled(
    block: Callable[[int], None], units: int, uow_dir: str, profiler: str
) -> tuple[float, Counter[str], Counter[Func]]:
    """Client-thread CPU seconds per unit under ``profiler``, and the shares it saw."""
    gc.collect()
    started = time.thread_time()
    if profiler == "sample":
        with Sampler() as sampler:
            block(units)
        functions = sampler.samples
        categories: Counter[str] = Counter()
        for func, count in functions.items():
            categories[category(func[0], uow_dir)] += count
    else:
        # Timed by this thread's CPU clock: time blocked on the socket costs nothing, so
        # the shares are of CPU only, and the server's part is measured apart.
        profile = cProfile.Profile(time.thread_time)
        profile.enable()
        block(units)
        profile.disable()
        stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
        categories, functions = attribute(stats, uow_dir)
    return (time.thread_time() - started) / units, categories, functions


@dataclass(frozen=True)
class Plan:
    """How every path is measured."""

    units: int
    rounds: int
    profiler: str
    uow_dir: str
    """uow's package directory, with a trailing slash: code from there is uow's own."""


def measure(blocks: dict[str, Callable[[int], None]], plan: Plan) -> list[PathProfile]:
    """``rounds`` rounds; in each, every path runs an unprofiled then a profiled block.

    The paths take turns within a round (their order rotated each round), so a machine
    whose load drifts touches every path alike, as in ``benchmarks.run``.
    """
    for block in blocks.values():
        block(max(50, plan.units // 10))  # warm: caches, pools, the statement cache
    samples: dict[str, list[Sample]] = {path: [] for path in blocks}
    inflated: dict[str, list[float]] = {path: [] for path in blocks}
    by_category: dict[str, Counter[str]] = {path: Counter() for path in blocks}
    by_function: dict[str, Counter[Func]] = {path: Counter() for path in blocks}
    for round_ in range(plan.rounds):
        order = list(blocks)
        order = order[round_ % len(order) :] + order[: round_ % len(order)]
        for path in order:
            gc.collect()
            clock = _Clock()
            blocks[path](plan.units)
            samples[path].append(clock.sample(plan.units))
            cpu, categories, functions = profiled(
                blocks[path], plan.units, plan.uow_dir, plan.profiler
            )
            inflated[path].append(cpu)
            by_category[path].update(categories)
            by_function[path].update(functions)
        print(f"  round {round_ + 1} of {plan.rounds} done", flush=True)
    return [
        PathProfile(
            path,
            samples[path],
            statistics.median(inflated[path]),
            by_category[path],
            by_function[path],
        )
        for path in blocks
    ]


# -- the paths -------------------------------------------------------------------------------


@contextmanager
def sync_blocks(url: str, paths: Sequence[str]) -> Iterator[dict[str, Callable[[int], None]]]:
    """Blocks of units run in this thread; every stack pre-pings (uow: its default)."""
    from .variants import TRANSACTION_VARIANTS, Config, WorkerState  # noqa: PLC0415

    config = Config(url, 2, True, "profile", ACCOUNTS)
    worker = WorkerState(1, ACCOUNTS)

    def blocks(transaction: Callable[[WorkerState], None]) -> Callable[[int], None]:
        def block(units: int) -> None:
            for _ in range(units):
                transaction(worker)

        return block

    with ExitStack() as stack:
        by_path = {}
        for path in paths:
            variant, workload = SYNC_PATHS[path]
            built = TRANSACTION_VARIANTS[variant].stack(config)
            stack.callback(built.close)
            built.warm()
            by_path[path] = blocks(built.transaction(workload))
        yield by_path


@contextmanager
def async_blocks(url: str, paths: Sequence[str]) -> Iterator[dict[str, Callable[[int], None]]]:
    """Blocks of units run by one task in an event loop of their own (one per block)."""
    from .async_bench import variants  # noqa: PLC0415

    loop = asyncio.new_event_loop()
    try:
        transactions, close = loop.run_until_complete(variants(url, 2))
        try:

            def blocks(transaction: Callable[[int], Any]) -> Callable[[int], None]:
                async def run(units: int) -> None:
                    for i in range(units):
                        await transaction(1 + (i * 7919) % ACCOUNTS)

                return lambda units: loop.run_until_complete(run(units))

            yield {path: blocks(transactions[ASYNC_PATHS[path]]) for path in paths}
        finally:
            loop.run_until_complete(close())
    finally:
        loop.close()


# -- the report ------------------------------------------------------------------------------


def table(profiles: Sequence[PathProfile]) -> list[str]:
    """The Markdown table: µs per unit by category, one row per path."""
    columns = [*CATEGORIES, "other threads", "server"]
    lines = [
        "| path | wall µs/unit | client CPU µs/unit | "
        + " | ".join(columns)
        + " | profiled/plain |",
        "|---|---|---|" + "---|" * len(columns) + "---|",
    ]
    for p in profiles:
        rows = p.breakdown()
        inflation = p.profiled_cpu * 1e6 / p.median("thread_cpu")
        lines.append(
            f"| {p.path} | {p.median('wall'):.0f} ({p.span('wall')}) "
            f"| {p.median('thread_cpu'):.0f} ({p.span('thread_cpu')}) | "
            + " | ".join(f"{rows[c]:.0f}" for c in columns)
            + f" | {inflation:.1f}x |"
        )
    return lines


def top_functions(profile: PathProfile, plan: Plan, count: int = 8) -> list[str]:
    """The functions with the most own CPU, in µs per unit (scaled like the table)."""
    cpu = profile.median("thread_cpu")
    total = sum(profile.by_category.values()) or 1.0
    items = []
    for (filename, line, name), seconds in profile.by_function.most_common(count):
        where = _short(filename, plan.uow_dir)
        items.append(f"`{where}:{line} {name}` {cpu * seconds / total:.1f}")
    seen = f" ({total:.0f} samples)" if plan.profiler == "sample" else ""
    return [f"- **{profile.path}**{seen}: " + "; ".join(items)]


def _short(filename: str, uow_dir: str) -> str:
    if filename.startswith(uow_dir):
        return "uow/" + filename[len(uow_dir) :].lstrip("/")
    # Before the project's root: a virtualenv inside the checkout is under it too.
    if "site-packages/" in filename:
        return filename.split("site-packages/", 1)[1]
    if filename.startswith(f"{ROOT}/"):
        return filename[len(f"{ROOT}/") :]
    return re.sub(r".*/python3\.\d+/", "", filename)


def report(profiles: Sequence[PathProfile], command: str, server: str, plan: Plan) -> str:
    how = (
        "a SIGPROF sampler (asked for every 1 ms of CPU; the kernel's tick may coarsen it, so"
        " the samples per path are given below the table; about 1% overhead)"
        if plan.profiler == "sample"
        else "cProfile on the thread's CPU clock (its overhead inflates calls unevenly: the"
        " shares are estimates)"
    )
    lines = [
        "# Profile: microseconds per unit of work, by whose code",
        "",
        *report_header(command, server),
        f"One client; each path {plan.units} units x {plan.rounds} rounds unprofiled (median,"
        f" range in brackets) and as many under {how}; the profile's shares are scaled to the"
        " unprofiled client CPU. *other threads*: process CPU beyond the client thread;"
        " *server*: wall minus process CPU (waiting for PostgreSQL). *profiled/plain*: client"
        " CPU per unit under the profiler over without it.",
        "",
        *table(profiles),
        "",
        "Top functions by own CPU (µs per unit; time in C goes to the Python function that"
        " called it):",
        "",
        *(line for p in profiles for line in top_functions(p, plan)),
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.profile", description=(__doc__ or "").split("\n\n")[0]
    )
    add = parser.add_argument
    add("--paths", default=",".join(PATHS), help=f"comma-separated, of {','.join(PATHS)} (all)")
    add("--units", type=int, default=4000, help="units of work per block (4000)")
    add("--rounds", type=int, default=3, help="unprofiled + profiled blocks per path (3)")
    add(
        "--profiler",
        choices=("sample", "cprofile"),
        default="sample",
        help="sample: SIGPROF every 1 ms of CPU (about 1%% overhead); cprofile: every call,"
        " inflated several times over (sample)",
    )
    add("--url", help="a server to use instead of a throwaway one (bench_accounts is recreated)")
    add("--out", type=Path, default=ROOT / "benchmarks" / "results" / "profile.md")
    args = parser.parse_args(argv)
    args.paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    if unknown := set(args.paths) - set(PATHS):
        parser.error(f"unknown paths {sorted(unknown)}; choose from {','.join(PATHS)}")
    if args.units < 1 or args.rounds < 1:
        parser.error("--units and --rounds must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import uow  # noqa: PLC0415

    from .models import create_schema  # noqa: PLC0415
    from .variants import Config  # noqa: PLC0415

    uow_dir = str(Path(uow.__file__).resolve().parent) + "/"
    plan = Plan(args.units, args.rounds, args.profiler, uow_dir)
    with _server(args.url) as (url, server), ExitStack() as stack:
        create_schema(Config(url, 1, False, "profile", ACCOUNTS).conninfo, ACCOUNTS)
        blocks = stack.enter_context(sync_blocks(url, [p for p in args.paths if p in SYNC_PATHS]))
        blocks |= stack.enter_context(
            async_blocks(url, [p for p in args.paths if p in ASYNC_PATHS])
        )
        profiles = measure({path: blocks[path] for path in args.paths}, plan)
    command = "python -m benchmarks.profile " + " ".join(argv if argv is not None else sys.argv[1:])
    text = report(profiles, command.strip(), server, plan)
    print()
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
