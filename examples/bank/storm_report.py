"""The storm's report: each mode's result, the table, and the verdict lines."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ModeResult", "clip", "print_table", "verdict", "written"]

POOL_EXHAUSTED = "pool exhausted (waited pool_timeout)"


def clip(text: str, width: int = 160) -> str:
    """The first line of ``text``, whole if it fits in ``width``, else cut after a word."""
    lines = text.strip().splitlines()
    first = lines[0].strip() if lines else ""
    if len(first) <= width:
        return first
    cut = textwrap.shorten(first, width, placeholder="...")
    # One word longer than the width leaves only the placeholder: cut that word then.
    return cut if cut != "..." else first[: width - 3] + "..."


@dataclass
class ModeResult:
    mode: str
    clients: int
    duration: float
    committed: int = 0
    declined: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    connection_errors: int = 0
    peak_connections: int = 0
    budget: int | None = None
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    invariant_holds: bool = False
    invariant_detail: str = ""
    connections_timeline: list[tuple[float, int]] = field(default_factory=list)
    throughput_timeline: list[tuple[float, float]] = field(default_factory=list)

    @property
    def per_second(self) -> float:
        return self.committed / self.duration


def print_table(results: list[ModeResult], max_connections: int) -> None:
    header = (
        f"{'mode':<13} {'clients':>7} {'committed':>9} {'tx/s':>7} {'errors':>7} {'conn err':>8}"
        f" {'peak conns':>10} {'budget':>6} {'p50 ms':>7} {'p99 ms':>8}  invariant"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        budget = "-" if r.budget is None else str(r.budget)
        print(
            f"{r.mode:<13} {r.clients:>7} {r.committed:>9} {r.per_second:>7.0f}"
            f" {sum(r.errors.values()):>7} {r.connection_errors:>8} {r.peak_connections:>10}"
            f" {budget:>6} {r.p50_ms:>7.1f} {r.p99_ms:>8.1f}"
            f"  {'holds' if r.invariant_holds else 'BROKEN'}"
        )
    print(f"(server max_connections={max_connections})")
    for r in results:
        if r.errors:
            print(f"errors in {r.mode}:")
            for kind, count in r.errors.items():
                print(f"  {count:>7}  {kind}")


def verdict(results: list[ModeResult]) -> list[str]:
    """One line per mode; a uow line says what it checks, FAIL if a guarantee broke.

    A uow mode is ok when the server refused none of its connections, its peak of server
    connections stayed within its budget and the bank invariant holds. Requests that gave
    up waiting for the pool are not connection errors, so the line counts them apart.
    """
    lines = []
    for r in results:
        refused = (
            f"the server refused {r.connection_errors} connections"
            if r.connection_errors
            else "the server refused no connection"
        )
        invariant = f"invariant {'holds' if r.invariant_holds else 'BROKEN'}"
        if r.mode == "naive":
            lines.append(
                f"naive: {refused}; peak {r.peak_connections} server connections"
                f" for {r.clients} clients; {invariant}."
            )
            continue
        ok = r.connection_errors == 0 and r.budget is not None and r.peak_connections <= r.budget
        ok = ok and r.invariant_holds
        within = "within" if r.budget is not None and r.peak_connections <= r.budget else "OVER"
        line = (
            f"{'ok' if ok else 'FAIL'} {r.mode}: {refused}; peak {r.peak_connections} server"
            f" connections, {within} budget {r.budget}; {invariant}"
        )
        waited = r.errors.get(POOL_EXHAUSTED, 0)
        others = sum(r.errors.values()) - waited - r.connection_errors
        if waited:
            line += f"; {waited} requests gave up waiting for the pool (pool exhausted)"
        if others:
            line += f"; {others} other errors (listed above)"
        lines.append(line + ".")
    return lines


def written(out: Path, names: list[str]) -> str:
    """The closing line: every file the storm wrote into ``out``, doctor reports included."""
    present = [name for name in names if (out / name).exists()]
    return f"wrote {', '.join(present)} in {out}"
