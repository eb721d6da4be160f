"""The storm's report: each mode's result, the table, and the verdict lines."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ModeResult", "print_table", "verdict"]


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
    """Plain statements of what happened; a line starting with FAIL is a broken guarantee."""
    lines = []
    for r in results:
        if r.mode == "naive":
            lines.append(
                f"naive: {r.connection_errors} connection errors, peak {r.peak_connections} server"
                f" connections for {r.clients} clients."
            )
            continue
        ok = r.connection_errors == 0 and r.budget is not None and r.peak_connections <= r.budget
        ok = ok and r.invariant_holds
        lines.append(
            f"{'ok' if ok else 'FAIL'} {r.mode}: {r.connection_errors} connection errors, peak"
            f" {r.peak_connections} connections within budget {r.budget}, invariant"
            f" {'holds' if r.invariant_holds else 'BROKEN'}."
        )
    return lines
