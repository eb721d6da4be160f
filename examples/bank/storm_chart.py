"""The storm demo's chart: server connections and throughput over time, one line per mode.

    python -m examples.bank.storm_chart [storm-results/summary.json] [--out storm.png]

``storm.py`` calls :func:`chart` after a run; run this module to draw the chart again
from a run's ``summary.json`` without running the storm.

The uow modes all hold exactly their budget of server connections, so their lines lie
on each other and on the budget line. Offsetting them would misreport the data; instead
each mode has its own colour, line style and markers (placed at different samples, so
the markers of overlapping lines stay visible), and the limits are labelled where
they are drawn, with the y-axis extended above max_connections. When a statement mode
ran, a third panel sets the request path's p50 and p99 side by side, for transfers and
for statement requests.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# Okabe-Ito colours (told apart with colour-blindness too); the limits are black and grey.
STYLES: dict[str, dict[str, Any]] = {
    "naive": {"color": "#D55E00", "linestyle": "-", "marker": None},
    "uow": {"color": "#0072B2", "linestyle": "-", "marker": "o"},
    "uow-short-tx": {"color": "#009E73", "linestyle": "--", "marker": "s"},
    "uow-async": {"color": "#CC79A7", "linestyle": "-.", "marker": "^"},
    "uow-pgbouncer": {"color": "#E69F00", "linestyle": ":", "marker": "D"},
    "statements-inline": {"color": "#56B4E9", "linestyle": "-", "marker": "v"},
    "statements-worker": {"color": "#000000", "linestyle": "--", "marker": "P"},
}
MARK_EVERY = 20  # samples between two markers of one line


def chart(modes: Sequence[Mapping[str, Any]], path: Path, max_connections: int) -> None:
    """Draw ``modes`` (``summary.json``'s entries) into ``path`` as a PNG."""
    # Imported here: matplotlib is an optional extra and slow to import.
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    heavy = [m for m in modes if m["mode"].startswith("statements-")]
    if heavy:
        fig, (top, bottom, latency) = plt.subplots(
            3, 1, figsize=(10, 10.5), gridspec_kw={"height_ratios": [3, 3, 2.4]}
        )
        bottom.sharex(top)
        _latencies(latency, heavy)
    else:
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7.5), sharex=True)
    for i, mode in enumerate(modes):
        style = STYLES.get(mode["mode"], {"linestyle": "-", "marker": "x"})
        # Each line's markers start at another sample: on overlapping lines they alternate.
        every = (i * MARK_EVERY // max(1, len(modes)), MARK_EVERY)
        for axis, key in ((top, "connections_timeline"), (bottom, "throughput_timeline")):
            if not mode[key]:
                continue
            xs, ys = zip(*mode[key], strict=True)
            marks = every if key == "connections_timeline" else (i % 2, 2)
            axis.plot(
                xs, ys, label=mode["mode"], linewidth=1.6, markersize=5, markevery=marks, **style
            )
    budget = next((m["budget"] for m in modes if m["budget"]), None)
    # A mode with job workers has a larger budget: their connections count too.
    others = {m["budget"]: m["mode"] for m in modes if m["budget"] and m["budget"] != budget}
    right = max((x for m in modes for x, _ in m["connections_timeline"]), default=1.0)
    top.axhline(max_connections, color="black", linestyle="--", linewidth=1)
    top.annotate(
        f"server max_connections = {max_connections}",
        (right, max_connections),
        xytext=(0, 4),
        textcoords="offset points",
        ha="right",
        va="bottom",
    )
    if budget:
        # Wide and pale, under the mode lines, so they stay visible on top of it.
        top.axhline(budget, color="grey", linewidth=7, alpha=0.3, zorder=0)
        top.annotate(
            f"uow budget = {budget} (processes x pool_size)",
            (right * 0.05, budget),  # left, below the band: the naive line is above it
            xytext=(0, -8),
            textcoords="offset points",
            ha="left",
            va="top",
            color="dimgrey",
        )
    for other, name in others.items():
        top.axhline(other, color="grey", linewidth=7, alpha=0.3, zorder=0)
        top.annotate(
            f"{name} budget = {other} (with its job workers)",
            (right * 0.05, other),
            xytext=(0, 8),
            textcoords="offset points",
            ha="left",
            va="bottom",
            color="dimgrey",
        )
    peak = max((y for m in modes for _, y in m["connections_timeline"]), default=0)
    top.set_ylim(0, max(max_connections, peak) * 1.2)
    top.set_ylabel("server connections")
    top.legend(loc="upper left", ncols=len(modes), fontsize="small")
    bottom.set_ylabel("transfers committed / s")
    bottom.set_xlabel("seconds")
    bottom.set_ylim(bottom=0)
    bottom.legend(loc="lower center", ncols=len(modes), fontsize="small")
    clients = modes[0]["clients"] if modes else 0
    if len(heavy) == len(modes):
        title = "statements rendered in requests vs in job workers"
    else:
        title = "a connection per request vs uow"
    fig.suptitle(f"Storm: {clients} clients, {title}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _latencies(axis: Any, modes: Sequence[Mapping[str, Any]]) -> None:
    """Grouped bars: p50 and p99 of transfers and of statement requests, per mode."""
    groups = [
        ("transfer p50", "p50_ms"),
        ("transfer p99", "p99_ms"),
        ("statement p50", "statement_p50_ms"),
        ("statement p99", "statement_p99_ms"),
    ]
    width = 0.8 / len(modes)
    for i, mode in enumerate(modes):
        xs = [g + (i - (len(modes) - 1) / 2) * width for g in range(len(groups))]
        ys = [mode.get(key) or 0.0 for _, key in groups]
        color = STYLES.get(mode["mode"], {}).get("color")
        bars = axis.bar(xs, ys, width, label=mode["mode"], color=color)
        axis.bar_label(bars, fmt="%.0f", fontsize="small")
    axis.set_xticks(range(len(groups)), [label for label, _ in groups])
    axis.margins(y=0.15)  # room for the labels above the bars
    axis.set_ylabel("request latency, ms")
    axis.legend(loc="upper left", fontsize="small")


def main(argv: list[str] | None = None) -> int:
    """Draw the chart again from a run's ``summary.json``."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    default = Path(__file__).parent / "storm-results" / "summary.json"
    parser.add_argument("summary", type=Path, nargs="?", default=default)
    parser.add_argument("--out", type=Path, help="PNG to write (storm.png beside the summary)")
    args = parser.parse_args(argv)
    summary = json.loads(args.summary.read_text())
    out = args.out or args.summary.with_name("storm.png")
    chart(summary["modes"], out, summary["max_connections"])
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
