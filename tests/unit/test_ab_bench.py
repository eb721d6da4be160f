"""benchmarks/ab.py: the arithmetic of the interleaved A/B comparison (the runs need a server)."""

from __future__ import annotations

import pytest

from benchmarks.ab import (
    SMOKE_FLOOR,
    TARGETS,
    Comparison,
    Target,
    gross_regressions,
    interleave,
    pair_ratios,
    parse_args,
    quartiles,
    verdict,
)
from tests.helpers import run_python

LEAN = Target("lean", "core-prebuilt", "uow-lean", 0.90, (1, 8), (8,))


def test_the_ratio_is_the_median_of_per_pair_ratios_not_the_ratio_of_totals() -> None:
    """B/A per pair, then the median: one disturbed pair cannot move it much."""
    pairs = [(100.0, 90.0), (100.0, 95.0), (10.0, 100.0), (200.0, 190.0), (100.0, 100.0)]
    assert pair_ratios(pairs) == [0.9, 0.95, 10.0, 0.95, 1.0]
    assert Comparison(LEAN, 8, pairs).ratio == pytest.approx(0.95)


def test_quartiles_are_inclusive_and_a_single_pair_is_its_own_range() -> None:
    """The interquartile range of 1..5 is 2-4; one value gives itself three times."""
    assert quartiles([5.0, 1.0, 3.0, 2.0, 4.0]) == (2.0, 3.0, 4.0)
    assert quartiles([0.7]) == (0.7, 0.7, 0.7)


def test_pairs_whose_a_slice_completed_nothing_are_left_out_and_none_left_is_an_error() -> None:
    """A zero A rate has no ratio; when every pair is like that the median says why it failed."""
    assert pair_ratios([(0.0, 50.0), (50.0, 50.0)]) == [1.0]
    with pytest.raises(ValueError, match="every A slice completed nothing"):
        quartiles(pair_ratios([(0.0, 50.0)]))


def test_pass_at_or_above_the_threshold_miss_below_info_without_one() -> None:
    """The threshold itself passes; a target without a threshold is only information."""
    assert verdict(0.90, 0.90) == "PASS"
    assert verdict(0.8999, 0.90) == "MISS"
    assert verdict(1.2, None) == "INFO"
    assert Comparison(LEAN, 1, [(100.0, 89.0)]).verdict == "MISS"
    assert Comparison(LEAN, 1, [(100.0, 91.0)]).verdict == "PASS"


def test_the_issues_targets_and_thresholds() -> None:
    """lean >= 0.90 at 1 and 8; uow/orm 1.05 with pre-ping, 1.0 without; async 1.0 at 1, 8, 32."""
    gated = {
        (t.b, t.a): (t.threshold, t.clients) for ts in TARGETS.values() for t in ts if t.threshold
    }
    assert gated == {
        ("uow-lean", "core-prebuilt"): (0.90, (1, 8)),
        ("uow", "orm"): (1.05, (1, 8)),
        ("uow", "orm-noping"): (1.0, (1, 8)),
        ("uow-async (session.execute)", "SQLAlchemy AsyncSession"): (1.0, (1, 8, 32)),
    }


def test_the_smoke_fails_only_below_the_floor_and_never_on_an_info_line() -> None:
    """0.85 misses the lean target but is no gross regression; 0.79 is; INFO lines never are."""
    info = Target("lean", "core-prebuilt-noping", "uow-lean", None, (8,))
    results = [
        Comparison(LEAN, 8, [(100.0, 85.0)]),
        Comparison(info, 8, [(100.0, 10.0)]),
    ]
    assert SMOKE_FLOOR == 0.8
    assert gross_regressions(results) == []
    assert gross_regressions([Comparison(LEAN, 8, [(100.0, 79.0)])]) == [
        "uow-lean / core-prebuilt @ 8: 0.790 < 0.8"
    ]


def test_interleave_alternates_a_and_b_and_discards_the_warm_up_pairs() -> None:
    """Slices run A, B, A, B...; pair i is (A's i-th rate, B's i-th rate) after the warm-up."""
    calls: list[str] = []

    def slice_of(name: str, rate: float) -> float:
        calls.append(name)
        return rate + len(calls)

    pairs = interleave(lambda: slice_of("A", 0), lambda: slice_of("B", 100), pairs=2, warmup=1)
    assert calls == ["A", "B"] * 3
    assert pairs == [(3, 104), (5, 106)]


def test_the_command_line_rejects_unknown_targets_and_slices_too_short() -> None:
    """--targets names come from TARGETS; --seconds must hold one pair of slices."""
    with pytest.raises(SystemExit):
        parse_args(["--targets", "lean,warp"])
    with pytest.raises(SystemExit):
        parse_args(["--seconds", "0.1"])
    smoke = parse_args(["--smoke"])
    assert (smoke.seconds, smoke.out) == (2.4, None)


def test_help_runs_without_a_server() -> None:
    """`python -m benchmarks.ab --help` lists the options and exits 0."""
    done = run_python("-m", "benchmarks.ab", "--help", timeout=60)
    assert done.returncode == 0, done.stderr
    assert "--smoke" in done.stdout
    assert "--targets" in done.stdout
