"""The storm's report reads right: whole words, lines that say what they check, every file."""

from __future__ import annotations

from pathlib import Path

from examples.bank.storm_report import POOL_EXHAUSTED, ModeResult, clip, verdict, written

RESERVED = (
    "remaining connection slots are reserved for roles with the SUPERUSER attribute\n"
    "DETAIL: more text"
)


def test_clip_keeps_a_first_line_that_fits_whole() -> None:
    """The server's message is kept whole, without its later lines."""
    assert clip(RESERVED) == (
        "remaining connection slots are reserved for roles with the SUPERUSER attribute"
    )


def test_clip_cuts_after_a_whole_word() -> None:
    """A line over the width ends with a whole word and "...", never mid-word."""
    assert clip(RESERVED, 70) == "remaining connection slots are reserved for roles with the..."
    assert clip("x" * 300, 20) == "x" * 17 + "..."


def mode(name: str, **values: object) -> ModeResult:
    result = ModeResult(mode=name, clients=300, duration=10.0)
    values = {"peak_connections": 40, "budget": 40, "invariant_holds": True, **values}
    for key, value in values.items():
        setattr(result, key, value)
    return result


def test_a_uow_line_counts_pool_waits_apart_from_connection_errors() -> None:
    """71 pool-exhausted requests are named on the mode's own line, not after an "ok: 0"."""
    (line,) = verdict([mode("uow-async", errors={POOL_EXHAUSTED: 71})])

    assert line == (
        "ok uow-async: the server refused no connection; peak 40 server connections,"
        " within budget 40; invariant holds;"
        " 71 requests gave up waiting for the pool (pool exhausted)."
    )


def test_a_broken_guarantee_is_a_fail_line() -> None:
    """Refused connections, a peak over budget or a broken invariant make the line FAIL."""
    lines = verdict(
        [
            mode("uow", connection_errors=3, errors={"connect failed: x": 3}),
            mode("uow-short-tx", peak_connections=41),
            mode("uow-async", invariant_holds=False),
        ]
    )

    assert [line.split(":")[0] for line in lines] == [
        "FAIL uow",
        "FAIL uow-short-tx",
        "FAIL uow-async",
    ]
    assert "the server refused 3 connections" in lines[0]
    assert "other errors" not in lines[0]
    assert "peak 41 server connections, OVER budget 40" in lines[1]
    assert "invariant BROKEN" in lines[2]


def test_naive_line_states_the_refusals() -> None:
    """The naive mode's line gives the refused connections and the peak, with no verdict."""
    (line,) = verdict([mode("naive", connection_errors=819, peak_connections=97, budget=None)])

    assert line == (
        "naive: the server refused 819 connections; peak 97 server connections"
        " for 300 clients; invariant holds."
    )


def test_the_closing_line_lists_the_doctor_reports(tmp_path: Path) -> None:
    """Every file written is named, the doctor reports included; missing ones are not."""
    for name in ("summary.json", "storm.png", "doctor-uow.txt"):
        (tmp_path / name).write_text("x")

    line = written(tmp_path, ["summary.json", "storm.png", "doctor-uow.txt", "doctor-naive.txt"])

    assert line == f"wrote summary.json, storm.png, doctor-uow.txt in {tmp_path}"


def test_a_statement_mode_fails_when_a_statement_was_not_rendered() -> None:
    """statements-worker: rendered counts on the line; one left pending or failed is a FAIL."""
    done = mode(
        "statements-worker", statements=500, statements_rendered=366, job_workers=2,
        rendered_in_window=334, drain_s=0.9,
    )  # fmt: skip
    left = mode("statements-worker", statements=10, statements_rendered=9, statements_pending=1)

    ok, failed = verdict([done, left])

    assert ok.startswith("ok statements-worker:")
    assert ok.endswith(
        "500 statements requested, 366 rendered by 2 job workers (a repeat of a pending"
        " request shares its job; 334 in the window, the rest in 0.9 s after)."
    )
    assert failed.startswith("FAIL statements-worker:")
    assert failed.endswith(", 1 NOT RENDERED.")
