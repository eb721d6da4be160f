"""The fault scenarios of tests/faults, for AsyncUnitOfWork on a throwaway server.

Leaks (units ending every way an async block can), exhaustion (ten times more tasks
than connections), terminated backends (idle and busy), a server restart, and the bank
invariant through terminations and a restart. Each ends with the fault suite's check,
extended to the asyncio pool: nothing checked out, no session idle in transaction.
The server is the module's own (tests/async_/conftest.py ``server``), with
max_connections=20, so a leak shows up as ``too many clients``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import psycopg
from sqlalchemy import event, func, select, text
from sqlalchemy.exc import DataError, IntegrityError

from examples.bank.models import Account, LedgerEntry
from tests.async_.conftest import MAX_CONNECTIONS, assert_clean, run
from tests.faults.helpers import FaultWatch, kind
from tests.models import Item
from uow import (
    AsyncRepository,
    AsyncUnitOfWork,
    CommitOutcomeUnknown,
    ConnectionLost,
    Database,
    DatabaseUnavailable,
    PoolExhausted,
    TransactionRolledBack,
    TransientError,
)

POOL_SIZE = 4


class Shop(AsyncUnitOfWork):
    items: AsyncRepository[Item]


class Boom(Exception):
    """The application's own error, raised inside a block."""


async def until(condition: Callable[[], bool], *, timeout: float, what: str) -> float:
    """Poll ``condition`` every 10 ms without blocking the loop; fail after ``timeout``."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


async def backend_pid(unit: AsyncUnitOfWork) -> int:
    return int((await unit.session.execute(text("SELECT pg_backend_pid()"))).scalar_one())


def item_names(fault: FaultWatch) -> set[str]:
    return {name for (name,) in fault.query("SELECT name FROM uow_test_items")}


# -- leaks --------------------------------------------------------------------------------

UNITS = 1200
WORKERS = 8

# Each ending runs one unit of work that writes row u<n>, and returns whether that row
# must be committed: only the units that leave their block without an exception.


async def clean_exit(db: Database, n: int) -> bool:
    async with Shop(db) as unit:
        unit.items.add(Item(name=f"u{n}"))
    return True


async def early_return(db: Database, n: int) -> bool:
    async with Shop(db) as unit:
        unit.items.add(Item(name=f"u{n}"))
        await unit.flush()
        return True  # leaves the block half way: a clean exit, so it commits


async def raised(db: Database, n: int) -> bool:
    with contextlib.suppress(Boom):
        async with Shop(db) as unit:
            unit.items.add(Item(name=f"u{n}"))
            await unit.flush()
            raise Boom
    return False


async def database_error(db: Database, n: int) -> bool:
    with contextlib.suppress(DataError):
        async with Shop(db) as unit:
            unit.items.add(Item(name=f"u{n}"))
            await unit.flush()
            await unit.session.execute(text("SELECT 1 / 0"))
    return False


async def keyboard_interrupt(db: Database, n: int) -> bool:
    try:
        async with Shop(db) as unit:
            unit.items.add(Item(name=f"u{n}"))
            await unit.flush()
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        return False


async def cancelled(db: Database, n: int) -> bool:
    inside = asyncio.Event()

    async def body() -> None:
        async with Shop(db) as unit:
            unit.items.add(Item(name=f"u{n}"))
            await unit.flush()
            inside.set()
            await asyncio.sleep(60)  # an await on something else than the database

    task = asyncio.create_task(body())
    await inside.wait()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert task.cancelled()
    return False


async def cancelled_error_raised(db: Database, n: int) -> bool:
    try:
        async with Shop(db) as unit:
            unit.items.add(Item(name=f"u{n}"))
            await unit.flush()
            raise asyncio.CancelledError
    except asyncio.CancelledError:
        return False


async def timed_out(db: Database, n: int) -> bool:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(None) as deadline, Shop(db) as unit:
            unit.items.add(Item(name=f"u{n}"))
            await unit.flush()
            deadline.reschedule(asyncio.get_running_loop().time() + 0.002)
            await asyncio.sleep(60)  # expires here, not in a statement (test_cancellation's)
    return False


async def _yielding(db: Database, n: int) -> AsyncIterator[int]:
    async with Shop(db) as unit:
        unit.items.add(Item(name=f"u{n}"))
        await unit.flush()
        yield n
        unit.items.add(Item(name=f"u{n}-never"))  # the consumer never comes back


async def generator_closed(db: Database, n: int) -> bool:
    rows = _yielding(db, n)
    await anext(rows)
    await rows.aclose()  # GeneratorExit inside the block
    return False


async def generator_dropped(db: Database, n: int) -> bool:
    rows = _yielding(db, n)
    await anext(rows)
    del rows  # the loop's finaliser closes it later, in a task of its own
    return False


async def nested_failure(db: Database, n: int) -> bool:
    try:
        async with Shop(db) as outer:
            outer.items.add(Item(name=f"u{n}"))
            with contextlib.suppress(Boom):
                async with Shop(db) as inner:
                    inner.items.add(Item(name=f"u{n}-inner"))
                    raise Boom
    except TransactionRolledBack:
        return False
    raise AssertionError("a unit of work committed although a unit that joined it failed")


async def savepoint_failure(db: Database, n: int) -> bool:
    async with Shop(db) as unit:
        unit.items.add(Item(name=f"u{n}"))
        await unit.flush()
        try:
            async with unit.savepoint():
                unit.items.add(Item(name=f"u{n}"))  # the same unique name again
                await unit.flush()
        except IntegrityError as exc:
            assert isinstance(exc.orig, psycopg.errors.UniqueViolation), repr(exc.orig)
        else:
            raise AssertionError("a duplicate name was accepted")
    return True  # the savepoint's row is undone, the unit's own row commits


ENDINGS: dict[str, tuple[Callable[[Database, int], Awaitable[bool]], int]] = {
    "clean": (clean_exit, 20),
    "early_return": (early_return, 10),
    "raise": (raised, 12),
    "db_error": (database_error, 8),
    "keyboard_interrupt": (keyboard_interrupt, 6),
    "cancelled": (cancelled, 10),
    "cancelled_error": (cancelled_error_raised, 4),
    "timeout": (timed_out, 8),
    "generator_close": (generator_closed, 6),
    "generator_drop": (generator_dropped, 6),
    "nested_failure": (nested_failure, 8),
    "savepoint_failure": (savepoint_failure, 8),
}


class _Logged(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        cause = record.exc_info[1] if record.exc_info else None
        self.messages[f"{record.getMessage()} [{type(cause).__name__}]"] += 1


def test_no_leak_whatever_way_async_units_end(fault: FaultWatch) -> None:
    """1200 async units ending every way a block can, in 8 tasks: no leak, only clean exits."""
    db = fault.database(pool_size=POOL_SIZE, max_overflow=0, pool_timeout=5)
    seed = random.randrange(2**32)
    names, weights = list(ENDINGS), [weight for _, weight in ENDINGS.values()]
    done: Counter[str] = Counter()
    expected: set[str] = set()
    issued = 0
    logged = _Logged()
    replaced: list[object] = []
    event.listen(db.async_engine.sync_engine, "invalidate", lambda *args: replaced.append(args))

    async def worker(w: int) -> None:
        nonlocal issued
        rng = random.Random(seed + w)
        while issued < UNITS:
            n, issued = issued, issued + 1
            ending = rng.choices(names, weights)[0]
            if await ENDINGS[ending][0](db, n):
                expected.add(f"u{n}")
            done[ending] += 1

    async def scenario() -> float:
        async with asyncio.timeout(40):
            await asyncio.gather(*(worker(w) for w in range(WORKERS)))
        # Dropped generators are closed by tasks the loop's finaliser started.
        return await until(
            lambda: db.async_engine.pool.checkedout() == 0, timeout=5, what="finalisers"
        )

    logging.getLogger("uow").addHandler(logged)
    started = time.monotonic()
    try:
        with fault.sampling(interval=0.02) as sampler:
            settle = run(scenario())
    finally:
        logging.getLogger("uow").removeHandler(logged)
    elapsed = time.monotonic() - started

    rows = item_names(fault)
    missing, extra = expected - rows, rows - expected
    end = assert_clean(fault)
    print(
        f"\n[async leaks] {sum(done.values())} units in {WORKERS} tasks in {elapsed:.1f}s "
        f"(seed {seed}): " + ", ".join(f"{name} {done[name]}" for name in ENDINGS) + "; "
        f"committed {len(rows)} rows = the {len(expected)} clean exits; finalisers done "
        f"{settle * 1000:.0f} ms after the last unit; {len(replaced)} connections "
        f"invalidated; {sampler}; "
        f"uow log warnings {dict(logged.messages) or 0}; {end}"
    )
    assert sum(done.values()) == UNITS
    assert set(done) == set(ENDINGS), f"endings never drawn: {set(ENDINGS) - set(done)}"
    assert not missing and not extra, (
        f"seed {seed}: {len(missing)} committed rows missing (e.g. {sorted(missing)[:5]}), "
        f"{len(extra)} rows from failed units (e.g. {sorted(extra)[:5]})"
    )
    assert sampler.peak_connections <= POOL_SIZE


# -- exhaustion ---------------------------------------------------------------------------

CALLERS = 40
POOL_TIMEOUT = 1.0
HOLD = 0.3  # seconds each unit holds its connection


def test_overload_fails_fast_with_pool_exhausted(fault: FaultWatch) -> None:
    """40 tasks on pool_size=4: <=4 server sessions, the unserved get PoolExhausted at ~1 s."""
    db = fault.database(pool_size=POOL_SIZE, max_overflow=0, pool_timeout=POOL_TIMEOUT)
    log_start = fault.server.log_path.stat().st_size
    outcomes: list[tuple[str, float]] = []

    async def caller() -> None:
        began = time.monotonic()
        try:
            async with AsyncUnitOfWork(db) as unit:
                await unit.session.execute(text("SELECT pg_sleep(:s)"), {"s": HOLD})
        except Exception as exc:
            outcomes.append((kind(exc), time.monotonic() - began))
        else:
            outcomes.append(("ok", time.monotonic() - began))

    async def scenario() -> None:
        async with asyncio.timeout(20):
            await asyncio.gather(*(caller() for _ in range(CALLERS)))

    with fault.sampling() as sampler:
        run(scenario())

    by_kind = Counter(name for name, _ in outcomes)
    waits = sorted(waited for name, waited in outcomes if name == "PoolExhausted")
    ok_times = sorted(waited for name, waited in outcomes if name == "ok")
    log = fault.server.log_path.read_bytes()[log_start:].decode(errors="replace")
    end = assert_clean(fault)
    print(
        f"\n[async exhaustion] {CALLERS} tasks holding {HOLD}s on pool_size={POOL_SIZE}, "
        f"pool_timeout={POOL_TIMEOUT:g}s, max_connections={MAX_CONNECTIONS}: {dict(by_kind)}; "
        f"PoolExhausted after {waits[0]:.2f}-{waits[-1]:.2f}s; successes took "
        f"{ok_times[0]:.2f}-{ok_times[-1]:.2f}s; {sampler}; "
        f"'too many clients' in server log: {log.count('too many clients')}; {end}"
    )
    assert set(by_kind) == {"ok", "PoolExhausted"}, f"unexpected errors: {dict(by_kind)}"
    assert POOL_SIZE <= by_kind["ok"] <= POOL_SIZE * (POOL_TIMEOUT / HOLD + 2)
    assert all(POOL_TIMEOUT <= waited <= POOL_TIMEOUT + 1 for waited in waits), waits
    assert all(waited <= POOL_TIMEOUT + HOLD + 1 for waited in ok_times), ok_times
    assert 1 <= sampler.peak_connections <= POOL_SIZE
    assert "too many clients" not in log


# -- terminated backends ------------------------------------------------------------------


async def fill_pool(db: Database) -> set[int]:
    """Open every pooled connection at once (units meet at a barrier); return backend pids."""
    meet = asyncio.Barrier(POOL_SIZE)
    pids: set[int] = set()

    async def hold() -> None:
        async with AsyncUnitOfWork(db) as unit:
            pids.add(await backend_pid(unit))
            await meet.wait()

    async with asyncio.timeout(10):
        await asyncio.gather(*(hold() for _ in range(POOL_SIZE)))
    assert len(pids) == POOL_SIZE
    assert db.async_engine.pool.checkedin() == POOL_SIZE
    return pids


def test_idle_connections_terminated_are_replaced_without_errors(fault: FaultWatch) -> None:
    """All idle pooled connections terminated: the next units in 4 tasks see no error."""
    db = fault.database(pool_size=POOL_SIZE, max_overflow=0, pool_timeout=10)

    async def scenario() -> tuple[set[int], list[int], Counter[str], set[int], float]:
        before = await fill_pool(db)
        killed = fault.terminate_sessions()
        await until(lambda: fault.count_sessions() == 0, timeout=5, what="backends to exit")
        terminated_at = time.monotonic()
        outcomes: Counter[str] = Counter()
        after: set[int] = set()
        first_ok: list[float] = []

        async def work() -> None:
            for _ in range(10):
                try:
                    async with AsyncUnitOfWork(db) as unit:
                        after.add(await backend_pid(unit))
                    first_ok.append(time.monotonic() - terminated_at)
                    outcomes["ok"] += 1
                except Exception as exc:
                    outcomes[kind(exc)] += 1

        async with asyncio.timeout(20):
            await asyncio.gather(*(work() for _ in range(POOL_SIZE)))
        return before, killed, outcomes, after, min(first_ok, default=-1.0)

    before, killed, outcomes, after, first = run(scenario())
    end = assert_clean(fault)
    print(
        f"\n[async terminate idle] killed {len(killed)} idle backends; {POOL_SIZE}x10 units: "
        f"{dict(outcomes)}; first success {first * 1000:.0f} ms after; "
        f"{len(after)} new backends, {len(after & before)} old ones reused; {end}"
    )
    assert set(killed) == before
    assert outcomes == {"ok": POOL_SIZE * 10}
    assert not after & before


def test_busy_connections_terminated_fail_only_their_units(fault: FaultWatch) -> None:
    """Backends killed mid-query: only those units fail (ConnectionLost); queued ones succeed."""
    db = fault.database(pool_size=POOL_SIZE, max_overflow=0, pool_timeout=10)
    failures: list[tuple[BaseException, float]] = []
    late: Counter[str] = Counter()
    terminated_at = 0.0

    def busy() -> bool:
        row = fault.side.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
            " AND state = 'active' AND query LIKE '%%pg_sleep%%'",
            (fault.app_name,),
        ).fetchone()
        return row is not None and row[0] == POOL_SIZE

    async def sleeper() -> None:
        try:
            async with AsyncUnitOfWork(db) as unit:
                await unit.session.execute(text("SELECT pg_sleep(2)"))
        except Exception as exc:
            failures.append((exc, time.monotonic() - terminated_at))

    async def latecomer() -> None:
        try:
            async with AsyncUnitOfWork(db) as unit:  # queued behind the sleepers
                await unit.session.execute(text("SELECT 1"))
            late["ok"] += 1
        except Exception as exc:
            late[kind(exc)] += 1

    async def scenario() -> tuple[set[int], list[int], set[int]]:
        nonlocal terminated_at
        before = await fill_pool(db)
        sleepers = [asyncio.create_task(sleeper()) for _ in range(POOL_SIZE)]
        await until(busy, timeout=5, what="every pooled connection to run pg_sleep")
        latecomers = [asyncio.create_task(latecomer()) for _ in range(POOL_SIZE)]
        await asyncio.sleep(0.05)  # they are queued for a connection now
        terminated_at = time.monotonic()
        killed = await asyncio.to_thread(fault.terminate_sessions, state="active")
        async with asyncio.timeout(10):
            await asyncio.gather(*sleepers, *latecomers)
        return before, killed, await fill_pool(db)

    before, killed, refill = run(scenario())
    end = assert_clean(fault)
    kinds = Counter(kind(exc) for exc, _ in failures)
    print(
        f"\n[async terminate busy] killed {len(killed)} backends running pg_sleep(2): sleepers "
        f"failed {dict(kinds)} within {max(t for _, t in failures) * 1000:.0f} ms; "
        f"{POOL_SIZE} queued latecomers {dict(late)}; refill round: {len(refill)} new "
        f"backends; {end}"
    )
    assert set(killed) == before
    assert len(failures) == POOL_SIZE, f"only {len(failures)} of the killed units failed"
    for exc, after in failures:
        assert after < 1.5, f"a unit failed {after:.2f}s after its backend was killed"
        assert isinstance(exc, ConnectionLost), repr(exc)
    assert late == {"ok": POOL_SIZE}
    assert not refill & before


# -- server restart -----------------------------------------------------------------------

LOOPERS = 8
DOWN_FOR = 1.0
RECOVERY_LIMIT = 3.0  # seconds from "server accepts connections" to the first unit committed


@dataclass(frozen=True)
class Attempt:
    began: float
    ended: float
    outcome: str  # "ok" or the error's kind
    name: str


async def probe(dsn: str, went_down: list[float], ready: list[float]) -> None:
    """Connect every 10 ms; record when the server, once down, accepts connections again."""
    while True:
        await asyncio.sleep(0.01)
        try:
            connection = await psycopg.AsyncConnection.connect(dsn, connect_timeout=2)
        except psycopg.OperationalError:
            if not went_down:
                went_down.append(time.monotonic())
            continue
        await connection.close()
        if went_down:
            ready.append(time.monotonic())
            return


def test_units_recover_within_seconds_after_a_restart(fault: FaultWatch) -> None:
    """A 1 s restart under 8 looping tasks: units succeed again <= 3 s after, and stay ok."""
    db = fault.database(pool_size=POOL_SIZE, max_overflow=0, pool_timeout=2, connect_timeout=2)
    attempts: list[Attempt] = []
    went_down: list[float] = []
    ready: list[float] = []
    stop = asyncio.Event()

    async def loop(t: int) -> None:
        k = 0
        while not stop.is_set():
            name, k = f"r{t}-{k}", k + 1
            began = time.monotonic()
            try:
                async with Shop(db) as unit:
                    unit.items.add(Item(name=name))
            except Exception as exc:
                attempts.append(Attempt(began, time.monotonic(), kind(exc), name))
                await asyncio.sleep(0.02)  # a client pausing after an error
            else:
                attempts.append(Attempt(began, time.monotonic(), "ok", name))
                await asyncio.sleep(0.005)

    async def scenario() -> tuple[float, float]:
        loopers = [asyncio.create_task(loop(t)) for t in range(LOOPERS)]
        await asyncio.sleep(1.0)
        watcher = asyncio.create_task(probe(fault.server.dsn, went_down, ready))
        restart_began = time.monotonic()
        await asyncio.to_thread(fault.server.restart, down_for=DOWN_FOR)
        back = time.monotonic()  # pg_ctl start -w has seen the server accept connections
        await asyncio.sleep(2.5)
        stop.set()
        async with asyncio.timeout(10):
            await asyncio.gather(*loopers)
            await watcher
        return restart_began, back

    with fault.sampling(interval=0.02) as sampler:
        restart_began, back = run(scenario())

    assert went_down and ready, "the probe missed the restart"
    up = ready[0]
    before = [a for a in attempts if a.ended < restart_began]
    during = [a for a in attempts if a.ended >= restart_began and a.began < back]
    after = [a for a in attempts if a.began >= back]
    first_ok = min((a.ended for a in attempts if a.outcome == "ok" and a.ended > up), default=None)
    assert first_ok is not None, "no unit succeeded after the restart"
    recovery = first_ok - up
    recovered = [a for a in attempts if a.began >= first_ok]
    backing_off = [a for a in after if a.outcome != "ok"]
    errors = Counter(a.outcome for a in during if a.outcome != "ok")
    committed = {a.name for a in attempts if a.outcome == "ok"}
    rows = item_names(fault)
    end = assert_clean(fault)
    print(
        f"\n[async restart] {LOOPERS} tasks, server down {up - went_down[0]:.2f}s: before "
        f"{len(before)} ok; during {sum(a.outcome == 'ok' for a in during)} ok, errors "
        f"{dict(errors)}; started after restart() returned "
        f"{dict(Counter(a.outcome for a in after))}; recovery {recovery * 1000:.0f} ms after "
        f"the server accepted again, then {len(recovered)} units all ok; "
        f"{len(committed)} acknowledged commits, {len(rows)} rows "
        f"({len(rows - committed)} committed though the client saw an error); "
        f"counters {db.counters()}; {sampler}; {end}"
    )
    assert before and all(a.outcome == "ok" for a in before)
    assert recovery <= RECOVERY_LIMIT
    assert after and recovered
    assert all(a.outcome == "ok" for a in recovered), Counter(a.outcome for a in recovered)
    assert all(
        a.outcome == "DatabaseUnavailable" and a.began < up + RECOVERY_LIMIT for a in backing_off
    ), Counter(a.outcome for a in backing_off)
    assert committed <= rows, f"acknowledged commits lost: {sorted(committed - rows)[:5]}"
    assert sampler.peak_checked_out <= POOL_SIZE


# -- the bank invariant -------------------------------------------------------------------

ACCOUNTS = 20
OPENING = 10_000
RETRYABLE = (TransientError, CommitOutcomeUnknown, DatabaseUnavailable, PoolExhausted)


class Bank(AsyncUnitOfWork):
    accounts: AsyncRepository[Account]
    ledger: AsyncRepository[LedgerEntry]


async def open_accounts(db: Database) -> None:
    """ACCOUNTS accounts, each with an opening deposit in the ledger."""
    async with Bank(db) as bank:
        accounts = [Account(owner=f"owner-{i}", balance=OPENING) for i in range(ACCOUNTS)]
        bank.accounts.add_all(accounts)
        await bank.flush()
        bank.ledger.add_all(
            LedgerEntry(idempotency_key=f"open-{a.id}", target_id=a.id, amount=OPENING)
            for a in accounts
        )


async def transfer(db: Database, source: int, target: int, amount: int, key: str) -> str:
    """Move money under both row locks (taken in id order); a known key changes nothing."""
    async with Bank(db) as bank:
        locked = {i: await bank.accounts.get_for_update(i) for i in sorted((source, target))}
        if await bank.ledger.exists(idempotency_key=key):
            return "replayed"
        payer, payee = locked[source], locked[target]
        assert payer is not None and payee is not None
        if payer.balance < amount:
            return "declined"
        payer.balance -= amount
        payee.balance += amount
        bank.ledger.add(
            LedgerEntry(idempotency_key=key, source_id=source, target_id=target, amount=amount)
        )
    return "committed"


def test_bank_invariant_holds_through_terminations_and_a_restart(fault: FaultWatch) -> None:
    """Async transfers under kills and a restart: totals exact, none negative, each key once."""
    db = fault.database(pool_size=6, pool_timeout=5)
    total = ACCOUNTS * OPENING
    committed: list[str] = []
    outcomes: Counter[str] = Counter()
    reads: list[int] = []
    negative_seen = 0
    stop = asyncio.Event()

    async def client(i: int) -> None:
        rng = random.Random(i)
        while not stop.is_set():
            source, target = rng.sample(range(1, ACCOUNTS + 1), 2)
            key = uuid.uuid4().hex
            for _attempt in range(60):  # the client retries with the same key, for ~6 s
                try:
                    outcome = await transfer(db, source, target, rng.randint(1, 500), key)
                except RETRYABLE as exc:
                    outcomes[f"retried after {type(exc).__name__}"] += 1
                    await asyncio.sleep(0.1)
                    continue
                outcomes[outcome] += 1
                if outcome in ("committed", "replayed"):
                    committed.append(key)
                break
            else:
                outcomes["gave up"] += 1

    async def reader() -> None:
        nonlocal negative_seen
        while not stop.is_set():
            try:
                async with Bank(db, readonly=True, isolation="REPEATABLE READ") as bank:
                    query = select(func.sum(Account.balance), func.min(Account.balance))
                    row = (await bank.session.execute(query)).one()
            except RETRYABLE:
                await asyncio.sleep(0.05)
                continue
            reads.append(int(row[0]))
            negative_seen += int(row[1]) < 0
            await asyncio.sleep(0.005)

    async def inject() -> None:
        try:
            await asyncio.sleep(1.5)
            outcomes["backends terminated"] += len(
                await asyncio.to_thread(fault.terminate_sessions)
            )
            await asyncio.sleep(1.5)
            await asyncio.to_thread(fault.server.restart, down_for=1.0)
            await asyncio.sleep(2.5)
        finally:
            stop.set()  # even if a fault could not be injected, the clients must stop

    async def scenario() -> None:
        await open_accounts(db)
        async with asyncio.timeout(60):
            await asyncio.gather(inject(), reader(), reader(), *(client(i) for i in range(8)))

    started = time.monotonic()
    with fault.sampling(interval=0.02) as sampler:
        run(scenario())
    elapsed = time.monotonic() - started

    mismatched = fault.query(
        "SELECT a.id, a.balance, coalesce(i.amount, 0) - coalesce(o.amount, 0) FROM accounts a"
        " LEFT JOIN (SELECT target_id AS id, sum(amount) AS amount FROM ledger GROUP BY 1) i"
        " USING (id)"
        " LEFT JOIN (SELECT source_id AS id, sum(amount) AS amount FROM ledger GROUP BY 1) o"
        " USING (id)"
        " WHERE a.balance <> coalesce(i.amount, 0) - coalesce(o.amount, 0) OR a.balance < 0"
    )
    ((stored_total,),) = fault.query("SELECT sum(balance) FROM accounts")
    counts = dict(
        fault.query(
            "SELECT idempotency_key, count(*) FROM ledger WHERE idempotency_key = ANY(%s)"
            " GROUP BY 1",
            (committed,),
        )
    )
    end = assert_clean(fault)
    print(
        f"\n[async bank] {elapsed:.1f}s, {len(committed)} transfers acknowledged, "
        f"{len(reads)} full reads, outcomes {dict(outcomes)}; total {stored_total}, "
        f"{len(mismatched)} accounts off their ledger; {sampler}; {end}"
    )
    assert committed and reads
    assert set(reads) == {total}  # every snapshot read sums to the total
    assert negative_seen == 0
    assert stored_total == total
    assert not mismatched, mismatched[:5]
    assert len(counts) == len(set(committed)) == len(committed)
    assert set(counts.values()) == {1}  # applied exactly once, even after retries
    assert outcomes["gave up"] == 0
    assert outcomes["backends terminated"] >= 1
    assert sampler.peak_connections <= 6
