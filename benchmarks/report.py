"""Results: medians over repeats, ratios within the run, targets, and results.md/.json/.png.

Ratios are paired: a variant's tps is divided by the reference's tps *of the same
repeat* (measured a few seconds apart, the variants interleaved), and the median of
those per-repeat ratios is reported. Absolute numbers on a small shared machine drift;
paired ratios drift much less.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .measure import Measurement

__all__ = ["BulkPoint", "Point", "Report", "Target"]

TRANSACTION_WORKLOADS = {
    "W1": "one short transaction: UPDATE one random row, commit",
    "W2": "a transfer: lock two rows in id order (SELECT ... FOR UPDATE), update both, commit",
}
W3_TITLE = "bulk load into bench_rows, one client, one transaction"


@dataclass
class Point:
    """One measured point: a variant running a workload with some clients, in one repeat."""

    workload: str
    clients: int
    variant: str
    repeat: int
    pre_ping: bool | None
    """None for pgbench, which has no pool."""
    measurement: Measurement


@dataclass
class BulkPoint:
    """One timed W3 load."""

    variant: str
    repeat: int
    rows: int
    seconds: float
    rows_found: int
    """Rows in bench_rows afterwards: must equal ``rows``."""
    error: str | None = None
    other_cpu: float | None = None
    """Share of the CPUs other processes took meanwhile (see ``CpuMeter``)."""

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 and self.error is None else 0.0


@dataclass
class Target:
    """A goal checked on the results; ``passed`` None means it could not be measured."""

    name: str
    value: str
    goal: str
    passed: bool | None
    note: str = ""
    info: bool = False
    """Not a goal: a number printed beside the targets to help read them."""

    def line(self) -> str:
        note = f"  ({self.note})" if self.note else ""
        if self.info:
            return f"INFO  {self.name}: {self.value}{note}"
        verdict = {True: "PASS", False: "MISS", None: "N/A "}[self.passed]
        return f"{verdict}  {self.name}: {self.value} (goal {self.goal}){note}"


def _median(values: Iterable[float]) -> float | None:
    data = list(values)
    return statistics.median(data) if data else None


def _fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _percent(values: Iterable[object]) -> str:
    """The largest of some fractions, as a percentage; "-" if none is known."""
    known = [v for v in values if isinstance(v, float)]
    return f"{max(known):.0%}" if known else "-"


@dataclass
class Report:
    """Everything a run measured, and what follows from it."""

    meta: dict[str, Any]
    pool_size: int
    points: list[Point] = field(default_factory=list)
    bulk: list[BulkPoint] = field(default_factory=list)

    # -- lookups ----------------------------------------------------------------------

    def _select(self, workload: str, clients: int, variant: str) -> list[Point]:
        return [
            p
            for p in self.points
            if p.workload == workload and p.clients == clients and p.variant == variant
        ]

    def workloads(self) -> list[str]:
        return sorted({p.workload for p in self.points})

    def clients(self, workload: str) -> list[int]:
        return sorted({p.clients for p in self.points if p.workload == workload})

    def variants(self, workload: str, clients: int | None = None) -> list[str]:
        seen: dict[str, None] = {}
        for p in self.points:
            if p.workload == workload and (clients is None or p.clients == clients):
                seen.setdefault(p.variant)
        return list(seen)

    def stat(
        self, workload: str, clients: int, variant: str, get: Callable[[Measurement], float]
    ) -> float | None:
        """Median over repeats of ``get(measurement)``."""
        return _median(get(p.measurement) for p in self._select(workload, clients, variant))

    def tps(self, workload: str, clients: int, variant: str) -> float | None:
        return self.stat(workload, clients, variant, lambda m: m.tps)

    def ratio(self, workload: str, clients: int, variant: str, reference: str) -> float | None:
        """Median over repeats of variant tps / reference tps in the same repeat."""
        ours = {p.repeat: p.measurement.tps for p in self._select(workload, clients, variant)}
        theirs = {p.repeat: p.measurement.tps for p in self._select(workload, clients, reference)}
        return _median(ours[r] / theirs[r] for r in ours.keys() & theirs.keys() if theirs[r] > 0)

    def errors(self, workload: str, clients: int, variant: str) -> dict[str, int]:
        total: dict[str, int] = {}
        for p in self._select(workload, clients, variant):
            for kind, count in p.measurement.errors.items():
                total[kind] = total.get(kind, 0) + count
        return total

    def bulk_seconds(self, variant: str) -> float | None:
        return _median(b.seconds for b in self.bulk if b.variant == variant and b.error is None)

    def bulk_ratio(self, variant: str, reference: str) -> float | None:
        """Median over repeats of variant rows/s divided by reference rows/s."""
        ours = {b.repeat: b.rows_per_s for b in self.bulk if b.variant == variant}
        theirs = {b.repeat: b.rows_per_s for b in self.bulk if b.variant == reference}
        return _median(ours[r] / theirs[r] for r in ours.keys() & theirs.keys() if theirs[r] > 0)

    # -- fairness ---------------------------------------------------------------------

    def fairness(self, workload: str, clients: int, variant: str = "uow") -> dict[str, Any]:
        """Per-client spread and p99 against first-come-first-served predictions."""
        points = self._select(workload, clients, variant)
        if not points:
            return {}
        hold_1 = self.stat(workload, 1, variant, lambda m: m.mean_ms)
        tps = self.tps(workload, clients, variant)
        p99 = self.stat(workload, clients, variant, lambda m: m.p99_ms)
        # FCFS: each caller waits for the callers ahead of it, clients / pool_size rounds
        # of one hold time. The brief's hold time is the 1-client latency; the loaded one
        # follows from Little's law (pool_size connections busy at tps: hold = size / tps).
        fcfs = clients / self.pool_size * hold_1 if hold_1 else None
        loaded = clients / tps * 1000 if tps else None
        return {
            "per_client_min": min(p.measurement.per_client_min for p in points),
            "per_client_max": max(p.measurement.per_client_max for p in points),
            "every_client_served": all(p.measurement.per_client_min > 0 for p in points),
            "p99_ms": p99,
            "hold_1_client_ms": hold_1,
            "fcfs_prediction_ms": fcfs,
            "p99_over_fcfs": p99 / fcfs if p99 and fcfs else None,
            "loaded_prediction_ms": loaded,
            "p99_over_loaded": p99 / loaded if p99 and loaded else None,
        }

    # -- targets ----------------------------------------------------------------------

    def targets(self) -> list[Target]:
        out: list[Target] = []

        def ratio_target(
            workload: str, clients: int, a: str, b: str, *, goal: float, note: str = ""
        ) -> None:
            if workload not in self.workloads() or clients not in self.clients(workload):
                return
            value = self.ratio(workload, clients, a, b)
            out.append(
                Target(
                    f"{a}/{b} {workload} @ {clients} clients",
                    _fmt(value, 3),
                    f">= {goal}",
                    None if value is None else value >= goal,
                    note,
                )
            )

        for workload in ("W1", "W2"):
            for clients in (1, 8):
                ratio_target(workload, clients, "uow", "orm", goal=0.95)
        for clients in self.clients("W1"):
            ratio_target("W1", clients, "uow-lean", "core", goal=0.9)
        for clients in self.clients("W1"):
            ratio_target("W1", clients, "uow-lean", "psycopg", goal=0.8, note="stretch")
        ratio_target("W1", 8, "uow", "uow-noping", goal=0.97, note="cost of the liveness check")
        out += self._info_lines()
        for workload in ("W1", "W2"):
            out += self._overload_targets(workload)
        out += self._bulk_targets()
        return out

    def _info_lines(self) -> list[Target]:
        """Ratios that explain the targets: against tuned Core, and with no pre-ping at all."""
        pairs = [
            ("W1", c, "uow-lean", "core-prebuilt", "statement built once vs per call")
            for c in self.clients("W1")
        ]
        pairs += [
            ("W1", 8, "uow", "orm-noping", "ORM without SQLAlchemy's pre-ping round trip"),
            ("W1", 8, "core", "core-noping", "what SQLAlchemy's pre-ping costs"),
            ("W1", 8, "orm", "orm-noping", "what SQLAlchemy's pre-ping costs"),
        ]
        out = []
        for workload, clients, a, b, note in pairs:
            value = self.ratio(workload, clients, a, b) if workload in self.workloads() else None
            if value is not None:
                out.append(
                    Target(
                        f"{a}/{b} {workload} @ {clients} clients",
                        f"{value:.3f}",
                        "",
                        None,
                        note,
                        info=True,
                    )
                )
        return out

    def _overload_targets(self, workload: str) -> list[Target]:
        if workload not in self.workloads():
            return []
        over = [c for c in self.clients(workload) if c > self.pool_size]
        if not over or not self._select(workload, max(over), "uow"):
            return []
        clients = max(over)
        at = f"{workload} @ {clients} clients"
        tps = self.tps(workload, clients, "uow") or 0.0
        best = max(self.tps(workload, c, "uow") or 0.0 for c in self.clients(workload))
        errors = sum(self.errors(workload, clients, "uow").values())
        peak = max(p.measurement.peak_connections for p in self._select(workload, clients, "uow"))
        fair = self.fairness(workload, clients)
        ratio = fair["p99_over_fcfs"]
        loaded = fair["p99_over_loaded"]
        return [
            Target(
                f"uow tps {at} vs best uow tps of the sweep",
                _fmt(tps / best if best else None, 3),
                ">= 0.9",
                tps >= 0.9 * best if best else None,
            ),
            Target(f"uow errors {at}", str(errors), "0", errors == 0),
            Target(
                f"uow peak server connections {at}",
                str(peak),
                f"<= pool size {self.pool_size}",
                peak <= self.pool_size,
            ),
            Target(
                f"uow every client served {at}",
                f"per-client min {fair['per_client_min']}, max {fair['per_client_max']}",
                "min >= 1",
                bool(fair["every_client_served"]),
            ),
            Target(
                f"uow p99 {at} vs FCFS prediction (1-client hold time)",
                f"{_fmt(fair['p99_ms'], 1)} ms / {_fmt(fair['fcfs_prediction_ms'], 1)} ms"
                f" = {_fmt(ratio, 2)}",
                "<= 2",
                None if ratio is None else ratio <= 2,
                f"with the hold time under load (Little's law, clients/tps ="
                f" {_fmt(fair['loaded_prediction_ms'], 1)} ms) the ratio is {_fmt(loaded, 2)}",
            ),
        ]

    def _bulk_targets(self) -> list[Target]:
        out: list[Target] = []
        if not self.bulk:
            return out
        vs_copy = self.bulk_ratio("insert_many", "copy")
        if vs_copy is not None:
            out.append(
                Target("insert_many/copy W3 rows/s", _fmt(vs_copy, 3), ">= 0.5", vs_copy >= 0.5)
            )
        vs_add_all = self.bulk_ratio("insert_many", "add_all")
        if vs_add_all is not None:
            out.append(
                Target(
                    "insert_many/add_all W3 rows/s",
                    _fmt(vs_add_all, 2),
                    ">= 2 ('well ahead')",
                    vs_add_all >= 2,
                )
            )
        return out

    # -- outputs ----------------------------------------------------------------------

    def markdown(self) -> str:
        lines = ["# uow benchmarks", ""]
        lines += [f"- {note}" for note in self.meta.get("notes", [])]
        lines += ["", "| | |", "|---|---|"]
        lines += [f"| {key} | {value} |" for key, value in self.meta.get("environment", {}).items()]
        settings = self.meta.get("server_settings", {})
        if settings:
            lines += [
                "",
                "Server settings: " + ", ".join(f"`{k}={v}`" for k, v in settings.items()),
            ]
        lines += ["", f"Command: `{self.meta.get('command', '')}`", ""]
        for workload in self.workloads():
            lines += self._workload_table(workload)
        if self.bulk:
            lines += self._bulk_table()
        lines += self._fairness_table()
        lines += ["## Targets", "", "```"]
        lines += [t.line() for t in self.targets()]
        lines += ["```", ""]
        return "\n".join(lines)

    def _workload_table(self, workload: str) -> list[str]:
        lines = [
            f"## {workload}: {TRANSACTION_WORKLOADS.get(workload, '')}",
            "",
            "| clients | variant | tps (median) | tps min-max | p50 ms | p99 ms | errors"
            " | peak conns | per-client min-max | / psycopg | / orm | other CPU |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for clients in self.clients(workload):
            for variant in self.variants(workload, clients):
                points = self._select(workload, clients, variant)
                tps = [p.measurement.tps for p in points]
                spread = f"{min(tps):,.0f}-{max(tps):,.0f}"
                per_client = (
                    f"{min(p.measurement.per_client_min for p in points)}-"
                    f"{max(p.measurement.per_client_max for p in points)}"
                )
                peak = max(p.measurement.peak_connections for p in points)
                errors = sum(self.errors(workload, clients, variant).values())
                lines.append(
                    f"| {clients} | {variant} | {_fmt(self.tps(workload, clients, variant))}"
                    f" | {spread}"
                    f" | {_fmt(self.stat(workload, clients, variant, lambda m: m.p50_ms), 2)}"
                    f" | {_fmt(self.stat(workload, clients, variant, lambda m: m.p99_ms), 2)}"
                    f" | {errors} | {peak} | {per_client}"
                    f" | {_fmt(self.ratio(workload, clients, variant, 'psycopg'), 3)}"
                    f" | {_fmt(self.ratio(workload, clients, variant, 'orm'), 3)}"
                    f" | {_percent(p.measurement.extra.get('other_cpu') for p in points)} |"
                )
        kinds = [
            f"- {workload} @ {c} {v}: {kind}: {n}"
            for c in self.clients(workload)
            for v in self.variants(workload, c)
            for kind, n in self.errors(workload, c, v).items()
        ]
        lines.append("")
        if kinds:
            lines += ["Errors by kind:", "", *kinds, ""]
        return lines

    def _bulk_table(self) -> list[str]:
        rows = self.bulk[0].rows
        lines = [
            f"## W3: {W3_TITLE} ({rows:,} rows)",
            "",
            "| variant | seconds (median) | rows/s | / copy | / add_all | errors | other CPU |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for variant in dict.fromkeys(b.variant for b in self.bulk):
            seconds = self.bulk_seconds(variant)
            failed = sum(1 for b in self.bulk if b.variant == variant and b.error)
            lines.append(
                f"| {variant} | {_fmt(seconds, 3)} | {_fmt(rows / seconds if seconds else None)}"
                f" | {_fmt(self.bulk_ratio(variant, 'copy'), 3)}"
                f" | {_fmt(self.bulk_ratio(variant, 'add_all'), 2)} | {failed}"
                f" | {_percent(b.other_cpu for b in self.bulk if b.variant == variant)} |"
            )
        failures = [f"- {b.variant} repeat {b.repeat}: {b.error}" for b in self.bulk if b.error]
        lines.append("")
        return lines + ([*failures, ""] if failures else [])

    def _fairness_table(self) -> list[str]:
        rows = []
        for workload in self.workloads():
            for clients in self.clients(workload):
                if clients <= self.pool_size:
                    continue
                f = self.fairness(workload, clients)
                if not f:
                    continue
                rows.append(
                    f"| {workload} | {clients} | {f['per_client_min']}-{f['per_client_max']}"
                    f" | {_fmt(f['p99_ms'], 1)} | {_fmt(f['hold_1_client_ms'], 2)}"
                    f" | {_fmt(f['fcfs_prediction_ms'], 1)} | {_fmt(f['p99_over_fcfs'], 2)}"
                    f" | {_fmt(f['loaded_prediction_ms'], 1)} | {_fmt(f['p99_over_loaded'], 2)} |"
                )
        if not rows:
            return []
        return [
            f"## Fairness of uow under overload (pool size {self.pool_size})",
            "",
            "FCFS prediction = clients / pool size x hold time. With the 1-client latency as"
            " the hold time it ignores that the hold time itself grows under load (2 cores"
            " shared by server and clients); clients / tps is the same prediction with the"
            " hold time measured under load (Little's law).",
            "",
            "| workload | clients | per-client min-max | p99 ms | 1-client latency ms"
            " | FCFS prediction ms | p99 / FCFS | clients/tps ms | p99 / (clients/tps) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
            *rows,
            "",
        ]

    def summary(self) -> dict[str, Any]:
        """Medians and ratios per point, machine-readable."""
        table = []
        for workload in self.workloads():
            for clients in self.clients(workload):
                for variant in self.variants(workload, clients):
                    table.append(
                        {
                            "workload": workload,
                            "clients": clients,
                            "variant": variant,
                            "tps_median": self.tps(workload, clients, variant),
                            "p50_ms_median": self.stat(
                                workload, clients, variant, lambda m: m.p50_ms
                            ),
                            "p99_ms_median": self.stat(
                                workload, clients, variant, lambda m: m.p99_ms
                            ),
                            "ratio_to_psycopg": self.ratio(workload, clients, variant, "psycopg"),
                            "ratio_to_orm": self.ratio(workload, clients, variant, "orm"),
                            "errors": self.errors(workload, clients, variant),
                        }
                    )
        bulk = [
            {
                "variant": variant,
                "seconds_median": self.bulk_seconds(variant),
                "ratio_to_copy": self.bulk_ratio(variant, "copy"),
                "ratio_to_add_all": self.bulk_ratio(variant, "add_all"),
            }
            for variant in dict.fromkeys(b.variant for b in self.bulk)
        ]
        fairness = {
            f"{w}@{c}": self.fairness(w, c)
            for w in self.workloads()
            for c in self.clients(w)
            if c > self.pool_size and self.fairness(w, c)
        }
        return {"points": table, "bulk": bulk, "fairness": fairness}

    def to_json(self) -> str:
        return json.dumps(
            {
                "meta": self.meta,
                "pool_size": self.pool_size,
                "summary": self.summary(),
                "targets": [asdict(t) for t in self.targets()],
                "points": [asdict(p) for p in self.points],
                "bulk": [{**asdict(b), "rows_per_s": b.rows_per_s} for b in self.bulk],
            },
            indent=2,
        )

    def plot(self, path: Path, workloads: Sequence[str] = ("W1", "W2")) -> bool:
        """Write tps against clients (log x), one line per variant; False if nothing to plot."""
        shown = [w for w in workloads if w in self.workloads()]
        if not shown:
            return False
        # Imported here: matplotlib is slow to import and only needed for the chart.
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
        from matplotlib.ticker import NullLocator  # noqa: PLC0415

        fig, axes = plt.subplots(1, len(shown), figsize=(6.5 * len(shown), 4.8), squeeze=False)
        # One colour per variant in every panel.
        every = list(dict.fromkeys(v for w in shown for v in self.variants(w)))
        palette = plt.get_cmap("tab20" if len(every) > 10 else "tab10")
        colours = {v: palette(i) for i, v in enumerate(every)}
        for ax, workload in zip(axes[0], shown, strict=True):
            clients = self.clients(workload)
            for variant in self.variants(workload):
                xs = [c for c in clients if self._select(workload, c, variant)]
                ys = [self.tps(workload, c, variant) or 0.0 for c in xs]
                style = "o--" if variant.endswith("-noping") else "o-"
                ax.plot(xs, ys, style, label=variant, color=colours[variant])
            ax.set_xscale("log")
            ax.set_yscale("log")  # equal ratios look equally far apart
            ax.set_xticks(clients, [str(c) for c in clients])
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xlabel("clients (threads; pgbench: connections)")
            ax.set_ylabel("transactions / s, log scale (median of repeats)")
            ax.set_title(f"{workload}: {TRANSACTION_WORKLOADS[workload].split(':')[0]}")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize="small")
        fig.suptitle(f"pool size {self.pool_size}; client and server share the machine's CPUs")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return True
