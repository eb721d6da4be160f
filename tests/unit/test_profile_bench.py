"""benchmarks/profile.py: how CPU is attributed and scaled (the profile itself needs a server)."""

from __future__ import annotations

from collections import Counter

import pytest

from benchmarks.profile import PathProfile, Sample, attribute, category

UOW = "/src/uow/"
SITE = "/venv/lib/python3.11/site-packages"


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("/src/uow/_unit_of_work.py", "uow"),
        (f"{SITE}/sqlalchemy/orm/session.py", "SQLAlchemy ORM"),
        (f"{SITE}/sqlalchemy/engine/base.py", "SQLAlchemy Core"),
        (f"{SITE}/sqlalchemy/pool/base.py", "SQLAlchemy Core"),
        (f"{SITE}/sqlalchemy/ext/asyncio/session.py", "asyncio + greenlet"),
        (f"{SITE}/sqlalchemy/util/concurrency.py", "asyncio + greenlet"),
        ("/usr/lib/python3.11/asyncio/base_events.py", "asyncio + greenlet"),
        (f"{SITE}/psycopg/connection.py", "psycopg"),
        (f"{SITE}/psycopg_pool/pool.py", "psycopg"),
        ("/usr/lib/python3.11/threading.py", "other Python"),
    ],
)
def test_code_is_attributed_by_the_file_it_lives_in(filename: str, expected: str) -> None:
    """uow's own directory first, then SQLAlchemy's ORM, asyncio bridge and Core, psycopg."""
    assert category(filename, UOW) == expected


def test_a_builtins_time_goes_to_its_callers_in_proportion() -> None:
    """A C function called from uow (1 s) and SQLAlchemy (3 s) splits its 2 s as 0.5 and 1.5."""
    uow_fn = ("/src/uow/_unit_of_work.py", 10, "__enter__")
    sa_fn = (f"{SITE}/sqlalchemy/engine/base.py", 20, "execute")
    builtin = ("~", 0, "<method 'acquire' of '_thread.lock' objects>")
    stats = {
        uow_fn: (1, 1, 1.0, 4.0, {}),
        sa_fn: (1, 1, 2.0, 6.0, {}),
        builtin: (2, 2, 2.0, 2.0, {uow_fn: (1, 1, 1.0, 1.0), sa_fn: (1, 1, 3.0, 3.0)}),
    }
    by_category, by_function = attribute(stats, UOW)
    assert by_category == pytest.approx({"uow": 1.5, "SQLAlchemy Core": 3.5})
    assert by_function == pytest.approx({uow_fn: 1.5, sa_fn: 3.5})


def test_the_shares_are_scaled_to_unprofiled_cpu_and_the_rest_is_threads_and_server() -> None:
    """CPU 600 µs/unit split 1:2; process CPU 700, wall 1000: 100 other threads, 300 server."""
    profile = PathProfile(
        "orm",
        [Sample(1000, wall=1.0, thread_cpu=0.6, process_cpu=0.7)],
        profiled_cpu=0.0006,
        by_category=Counter({"uow": 10, "SQLAlchemy ORM": 20}),
        by_function=Counter(),
    )
    rows = profile.breakdown()
    assert rows["uow"] == pytest.approx(200)
    assert rows["SQLAlchemy ORM"] == pytest.approx(400)
    assert rows["psycopg"] == 0
    assert rows["other threads"] == pytest.approx(100)
    assert rows["server"] == pytest.approx(300)
