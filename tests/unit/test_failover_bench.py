"""benchmarks/failover.py and writers.py: how writes add up and the command line (the
benchmark itself runs by hand; tests/ha runs its Patroni events)."""

from __future__ import annotations

from benchmarks.failover import EVENTS, Event, Fault, Hang, Outcome, table
from benchmarks.writers import Timeouts, Write, summarise
from tests.helpers import run_python


def _acks(writer: int, ends: list[float], first_key: int = 1) -> list[Write]:
    return [
        Write(writer, first_key + index, end - 0.01, end, None) for index, end in enumerate(ends)
    ]


def test_events_cover_failovers_and_hung_servers() -> None:
    """`--events` defaults to every event: the Patroni ones and the hung-server ones."""
    assert [name for name, event in EVENTS.items() if isinstance(event, Event)] == [
        "switchover",
        "kill",
        "read-only",
    ]
    assert [name for name, event in EVENTS.items() if isinstance(event, Hang)] == [
        "black-hole",
        "stopped",
    ]


def test_both_stacks_get_the_same_limits() -> None:
    """Timeouts map to uow settings and to the libpq parameters plain SQLAlchemy gets."""
    limits = Timeouts(statement_timeout=5.0, connect_timeout=5.0)
    assert limits.uow_settings() == {"statement_timeout": 5.0, "connect_timeout": 5.0}
    assert limits.connect_args() == {"options": "-c statement_timeout=5000", "connect_timeout": 5}
    assert Timeouts().uow_settings() == {} and Timeouts().connect_args() == {}


def test_a_call_blocked_through_the_fault_is_the_longest_call() -> None:
    """The longest call is the longest single call, however many writes others made."""
    writes = [*_acks(0, [1.0, 2.0, 3.0, 4.0]), Write(1, 99, 1.5, 3.9, None)]
    summary = summarise(writes, set(range(1, 5)) | {99}, fault_start=2.5, fault_end=3.5)
    assert round(summary.longest_call, 6) == 2.4
    assert summary.lost == 0


def test_no_write_back_after_the_fault_is_an_open_outage_not_an_error() -> None:
    """Writers given up on: the gap runs to the end of the run; nothing came back."""
    writes = _acks(0, [1.0, 2.0, 3.0])
    summary = summarise(writes, {1, 2, 3}, fault_start=3.5, fault_end=10.0, until=40.0)
    assert summary.back_after_end is None and summary.to_full is None
    assert summary.longest_gap == summary.outage == 37.0


def test_calls_given_up_on_are_shown_as_still_blocked() -> None:
    """A stack with calls still blocked shows '> N s, k still blocked', never a number alone."""
    writes = _acks(0, [1.0, 2.0, 3.0])
    summary = summarise(writes, {1, 2, 3}, fault_start=3.5, fault_end=10.0, until=40.0)
    outcome = Outcome(
        "black-hole", "namespace", "sqlalchemy", Fault(3.5, 10.0, "10.200.0.2"), summary, 2, 0
    )
    blocked = Outcome(**{**outcome.__dict__, "still_blocked": [35.2, 36.4]})
    row = table([outcome, blocked]).splitlines()
    assert "| 0.0 s |" in row[2] and "| never | never |" in row[2]
    assert "| > 36 s, 2 still blocked |" in row[3]


def test_unknown_events_are_refused_with_the_choices() -> None:
    """An unknown event name is refused before anything starts, naming the known ones."""
    done = run_python("-m", "benchmarks.failover", "--events", "black-hole,flood", timeout=60)
    assert done.returncode == 2
    assert "unknown events: flood; choose from switchover, kill" in done.stderr
