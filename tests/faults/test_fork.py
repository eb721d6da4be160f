"""Fork safety: a pool used before fork() keeps working in the parent and in its children."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import time
from collections import Counter
from typing import Any

from sqlalchemy import text

from tests.faults.helpers import FaultWatch, kind
from tests.helpers import wait_for
from tests.models import Item, ShopUnitOfWork
from uow import Database

CHILDREN = 3
UNITS_PER_CHILD = 30
BUDGET = 30.0  # seconds for the children to finish

# Exit codes of a child
OK, UNIT_FAILED, USED_PARENT_CONNECTION, CRASHED = 0, 1, 2, 3


def backend_pid(db: Database, row: str | None = None) -> int:
    """Run one unit of work; return the server backend it ran on."""
    with ShopUnitOfWork(db) as unit:
        pid: int = unit.session.execute(text("SELECT pg_backend_pid()")).scalar_one()
        if row is not None:
            unit.items.add(Item(name=row))
    return pid


def child_units(
    db: Database, index: int, parent_backend: int
) -> tuple[int, set[int], Counter[str]]:
    """What each child does with the inherited Database: its own units of work."""
    backends: set[int] = set()
    errors: Counter[str] = Counter()
    for k in range(UNITS_PER_CHILD):
        try:
            backends.add(backend_pid(db, f"child{index}-{k}"))
        except Exception as exc:
            errors[kind(exc)] += 1
    db.dispose()  # close this child's connections before it exits
    if errors:
        code = UNIT_FAILED
    elif parent_backend in backends:
        code = USED_PARENT_CONNECTION
    else:
        code = OK
    return code, backends, errors


def multiprocessing_child(
    db: Database, index: int, parent_backend: int, results: multiprocessing.Queue[Any]
) -> None:
    code, backends, errors = child_units(db, index, parent_backend)
    results.put((index, os.getpid(), code, len(backends), dict(errors)))
    sys.exit(code)


def parent_units_while(alive: Any, db: Database, parent_backend: int) -> Counter[str]:
    """Run units in the parent while children work; count outcomes (ok or backend changed)."""
    outcomes: Counter[str] = Counter()
    deadline = time.monotonic() + BUDGET
    k = 0
    while alive() and time.monotonic() < deadline:
        try:
            same = backend_pid(db, f"parent-{k}") == parent_backend
            outcomes["ok" if same else "other backend"] += 1
        except Exception as exc:
            outcomes[kind(exc)] += 1
        k += 1
    return outcomes


def check_parent_after(
    fault: FaultWatch,
    db: Database,
    how: str,
    parent_backend: int,
    *,
    parent: Counter[str],
    codes: list[int | None],
) -> None:
    """Once the children exited: each exited OK, and the parent kept its connection and rows."""
    after = backend_pid(db)
    alive = parent_backend in dict(fault.sessions())
    rows = fault.query("SELECT count(*) FROM uow_test_items")[0][0]
    end = fault.assert_clean()
    print(
        f"\n[fork/{how}] {CHILDREN} children x {UNITS_PER_CHILD} units: exit codes "
        f"{codes}; parent meanwhile {dict(parent)}; parent backend {parent_backend} -> "
        f"{after} (alive: {alive}); {rows} rows; {end}"
    )
    assert sorted(codes, key=str) == [OK] * CHILDREN
    assert set(parent) == {"ok"}, parent
    assert after == parent_backend and alive
    assert rows == CHILDREN * UNITS_PER_CHILD + parent["ok"]


def test_pool_survives_multiprocessing_fork(fault: FaultWatch) -> None:
    """3 forked multiprocessing children and the parent run units at once, with no errors."""
    db = fault.database(pool_size=2, max_overflow=0)
    parent_backend = backend_pid(db)  # the pool is in use before the fork
    context = multiprocessing.get_context("fork")
    results: multiprocessing.Queue[Any] = context.Queue()
    children = [
        context.Process(target=multiprocessing_child, args=(db, i, parent_backend, results))
        for i in range(CHILDREN)
    ]
    for child in children:
        child.start()
    parent = parent_units_while(lambda: any(c.is_alive() for c in children), db, parent_backend)
    reports = []
    for _ in children:
        reports.append(results.get(timeout=BUDGET))
    for child in children:
        child.join(10)
        if child.is_alive():  # fail, but leave no process behind
            child.kill()
            child.join(5)
    codes = [child.exitcode for child in children]
    assert all(code == OK and not errors for _, _, code, _, errors in reports), sorted(reports)
    check_parent_after(fault, db, "multiprocessing", parent_backend, parent=parent, codes=codes)


def test_pool_survives_os_fork(fault: FaultWatch) -> None:
    """3 children from os.fork() use the inherited pool while the parent keeps its connection."""
    db = fault.database(pool_size=2, max_overflow=0)
    parent_backend = backend_pid(db)
    pids = []
    for index in range(CHILDREN):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = CRASHED
            try:
                code = child_units(db, index, parent_backend)[0]
            finally:
                os._exit(code)
        pids.append(pid)
    codes: dict[int, int] = {}

    def children_alive() -> bool:
        for pid in pids:
            if pid not in codes:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    codes[pid] = os.waitstatus_to_exitcode(status)
        return len(codes) < len(pids)

    parent = parent_units_while(children_alive, db, parent_backend)
    with contextlib.suppress(AssertionError):  # reported below, with the pids
        wait_for(lambda: not children_alive(), timeout=10, what="the children to exit")
    hung = [pid for pid in pids if pid not in codes]
    for pid in hung:  # fail, but leave no process behind
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert not hung, f"children {hung} still running after {BUDGET + 10}s"
    check_parent_after(
        fault, db, "os.fork", parent_backend, parent=parent, codes=list(codes.values())
    )
