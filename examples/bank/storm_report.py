"""The storm's report: each mode's result, the table, and the verdict lines."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ModeResult", "clip", "print_statement_table", "print_table", "verdict", "written"]

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
    cpu_ms_per_transfer: float = 0.0
    """The client processes' CPU (all their threads) per committed transfer."""
    invariant_holds: bool = False
    invariant_detail: str = ""
    connections_timeline: list[tuple[float, int]] = field(default_factory=list)
    throughput_timeline: list[tuple[float, float]] = field(default_factory=list)
    # The statement modes only: statement requests answered and their latency, the
    # statements rendered (by the end of the window, and in all), and the job workers.
    statements: int = 0
    statement_p50_ms: float = 0.0
    statement_p99_ms: float = 0.0
    statements_rendered: int = 0
    rendered_in_window: int = 0
    statements_pending: int = 0
    statements_failed: int = 0
    drain_s: float | None = None
    """statements-worker: seconds after the window until the backlog was rendered."""
    job_workers: int = 0
    peak_job_connections: int = 0

    @property
    def per_second(self) -> float:
        return self.committed / self.duration


def print_table(results: list[ModeResult], max_connections: int) -> None:
    width = max([13, *(len(r.mode) for r in results)])
    header = (
        f"{'mode':<{width}} {'clients':>7} {'committed':>9} {'tx/s':>7} {'errors':>7}"
        f" {'conn err':>8} {'peak conns':>10} {'budget':>6} {'p50 ms':>7} {'p99 ms':>8}"
        f" {'cpu ms/tx':>9}  invariant"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        budget = "-" if r.budget is None else str(r.budget)
        print(
            f"{r.mode:<{width}} {r.clients:>7} {r.committed:>9} {r.per_second:>7.0f}"
            f" {sum(r.errors.values()):>7} {r.connection_errors:>8} {r.peak_connections:>10}"
            f" {budget:>6} {r.p50_ms:>7.1f} {r.p99_ms:>8.1f} {r.cpu_ms_per_transfer:>9.2f}"
            f"  {'holds' if r.invariant_holds else 'BROKEN'}"
        )
    print(f"(server max_connections={max_connections})")
    for r in results:
        if r.errors:
            print(f"errors in {r.mode}:")
            for kind, count in r.errors.items():
                print(f"  {count:>7}  {kind}")


def print_statement_table(results: list[ModeResult]) -> None:
    """Inline versus worker rendering, side by side (nothing if no statement mode ran)."""
    heavy = [r for r in results if r.mode.startswith("statements-")]
    if not heavy:
        return
    header = (
        f"{'mode':<17} {'tx/s':>6} {'p50 ms':>7} {'p99 ms':>7} {'stmt req':>8}"
        f" {'stmt p50':>8} {'stmt p99':>8} {'rendered':>8} {'in window':>9} {'drain s':>7}"
        f" {'peak conns':>10} {'of jobs':>7} {'budget':>6}"
    )
    print(header)
    print("-" * len(header))
    for r in heavy:
        drain = "-" if r.drain_s is None else f"{r.drain_s:.1f}"
        budget = "-" if r.budget is None else str(r.budget)
        print(
            f"{r.mode:<17} {r.per_second:>6.0f} {r.p50_ms:>7.1f} {r.p99_ms:>7.1f}"
            f" {r.statements:>8} {r.statement_p50_ms:>8.1f} {r.statement_p99_ms:>8.1f}"
            f" {r.statements_rendered:>8} {r.rendered_in_window:>9} {drain:>7}"
            f" {r.peak_connections:>10} {r.peak_job_connections:>7} {budget:>6}"
        )
    print("(p50/p99: transfers; stmt: statement requests, answered after rendering inline,")
    print(" after deferring the job in workers; peak conns include the job workers')")


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
        statements_ok = not r.statements_pending and not r.statements_failed
        ok = ok and statements_ok
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
        if r.mode.startswith("statements-"):
            line += f"; {r.statements} statements requested, {r.statements_rendered} rendered"
            if r.job_workers:
                line += f" by {r.job_workers} job worker{'s' if r.job_workers > 1 else ''}"
                line += " (a repeat of a pending request shares its job"
                line += (
                    f"; {r.rendered_in_window} in the window, the rest in {r.drain_s:.1f} s after)"
                    if r.drain_s is not None
                    else ")"
                )
            if r.statements_pending:
                line += f", {r.statements_pending} NOT RENDERED"
            if r.statements_failed:
                line += f", {r.statements_failed} FAILED"
        lines.append(line + ".")
    return lines


def written(out: Path, names: list[str]) -> str:
    """The closing line: every file the storm wrote into ``out``, doctor reports included."""
    present = [name for name in names if (out / name).exists()]
    return f"wrote {', '.join(present)} in {out}"
