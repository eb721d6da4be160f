"""AsyncUnitOfWork against a raw asyncpg pool and raw psycopg async, in the same run.

    python -m benchmarks.async_bench [--quick] [--duration 5] [--repeats 3]

W1 (one short transaction: ``UPDATE ... SET balance = balance + 1 WHERE id = $1``, commit)
with plain SQLAlchemy ``AsyncSession`` as a further reference (what uow runs on),
from 1, 8 and 32 asyncio tasks in one event loop, every variant on a pool of the same
size, variants alternated within each repeat. Prints transactions per second and the
ratio of each variant to asyncpg and to raw psycopg async, and writes
``benchmarks/results/async.md`` and ``async.json``. Client and server share the
machine's cores, so only the ratios mean anything.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import psycopg_pool
from sqlalchemy import BigInteger, make_url, update
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import uow
from uow.testing import EmbeddedPostgres

ROWS = 10_000
SQL_PG = "UPDATE bench_accounts SET balance = balance + 1 WHERE id = %s"
SQL_ASYNCPG = "UPDATE bench_accounts SET balance = balance + 1 WHERE id = $1"

Transaction = Callable[[int], Awaitable[None]]


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "bench_accounts"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    balance: Mapped[int] = mapped_column(BigInteger)


async def run_point(transaction: Transaction, clients: int, duration: float) -> float:
    """Transactions per second from ``clients`` tasks looping for ``duration`` seconds."""
    done = 0
    deadline = time.monotonic() + duration

    async def client() -> None:
        nonlocal done
        rng = random.Random()  # noqa: S311 - load generation
        while time.monotonic() < deadline:
            await transaction(rng.randint(1, ROWS))
            done += 1

    started = time.monotonic()
    await asyncio.gather(*(client() for _ in range(clients)))
    return done / (time.monotonic() - started)


async def variants(url: str, pool_size: int) -> tuple[dict[str, Transaction], Callable[[], Any]]:
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    apg = await asyncpg.create_pool(dsn, min_size=pool_size, max_size=pool_size)
    ppool = psycopg_pool.AsyncConnectionPool(
        dsn, min_size=pool_size, max_size=pool_size, open=False
    )
    await ppool.open()
    db = uow.Database(uow.Settings(url=url, pool_size=pool_size, pool_timeout=30))
    stmt = update(Account).values(balance=Account.balance + 1)

    async def asyncpg_tx(key: int) -> None:
        async with apg.acquire() as conn, conn.transaction():
            await conn.execute(SQL_ASYNCPG, key)

    async def psycopg_tx(key: int) -> None:
        async with ppool.connection() as conn:  # commits on exit
            await conn.execute(SQL_PG, (key,))

    plain = create_async_engine(url, pool_size=pool_size, max_overflow=0)

    async def sqlalchemy_tx(key: int) -> None:
        async with AsyncSession(plain) as session, session.begin():
            await session.execute(stmt.where(Account.id == key))

    async def uow_core_tx(key: int) -> None:
        async with uow.AsyncUnitOfWork(db) as unit:
            await unit.session.execute(stmt.where(Account.id == key))

    async def uow_lean_tx(key: int) -> None:
        async with uow.AsyncUnitOfWork(db) as unit:
            await unit.repository(Account).update_where(
                {"balance": Account.balance + 1}, Account.id == key
            )

    async def uow_orm_tx(key: int) -> None:
        async with uow.AsyncUnitOfWork(db) as unit:
            account = await unit.repository(Account).get(key)
            assert account is not None
            account.balance += 1

    async def close() -> None:
        await apg.close()
        await ppool.close()
        await db.dispose_async()
        await plain.dispose()
        db.dispose()

    return {
        "asyncpg": asyncpg_tx,
        "psycopg-async": psycopg_tx,
        "SQLAlchemy AsyncSession": sqlalchemy_tx,
        "uow-async (session.execute)": uow_core_tx,
        "uow-async (update_where)": uow_lean_tx,
        "uow-async (ORM get + modify)": uow_orm_tx,
    }, close


async def main_async(args: argparse.Namespace, url: str) -> dict[str, Any]:
    with psycopg.connect(
        make_url(url).set(drivername="postgresql").render_as_string(hide_password=False),
        autocommit=True,
    ) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_accounts")
        conn.execute("CREATE TABLE bench_accounts (id bigint PRIMARY KEY, balance bigint NOT NULL)")
        conn.execute(
            "INSERT INTO bench_accounts SELECT g, 0 FROM generate_series(1, %s) g", (ROWS,)
        )
    txs, close = await variants(url, args.pool_size)
    results: dict[str, dict[int, list[float]]] = {name: {} for name in txs}
    for transaction in txs.values():  # open every pool's connections before measuring
        await run_point(transaction, max(args.clients), 0.5)
    try:
        for clients in args.clients:
            for repeat in range(args.repeats):
                order = list(txs)
                random.Random(repeat).shuffle(order)  # noqa: S311 - alternate, so drift hits all alike
                for name in order:
                    tps = await run_point(txs[name], clients, args.duration)
                    results[name].setdefault(clients, []).append(tps)
                    print(f"  {clients:>3} tasks  {name:<30} {tps:8.0f} tx/s", flush=True)
    finally:
        await close()
    return {
        name: {str(c): statistics.median(v) for c, v in by_clients.items()}
        for name, by_clients in results.items()
    }


def report(medians: dict[str, dict[str, float]], args: argparse.Namespace, server: str) -> str:
    lines = [
        "# Async W1: AsyncUnitOfWork vs asyncpg and psycopg async",
        "",
        f"Command: `python -m benchmarks.async_bench {' '.join(args.argv)}`  ",
        f"Server: {server}; pool size {args.pool_size} for every variant; median of "
        f"{args.repeats} runs of {args.duration:g} s per point; client and server share the "
        "machine's cores, so read the ratios, not the absolute numbers.",
        "",
        "| variant | "
        + " | ".join(f"{c} tasks: tx/s (vs asyncpg, vs psycopg)" for c in args.clients)
        + " |",
        "|---|" + "---|" * len(args.clients),
    ]
    for name, by_clients in medians.items():
        cells = []
        for c in args.clients:
            tps = by_clients[str(c)]
            vs_apg = tps / medians["asyncpg"][str(c)]
            vs_pg = tps / medians["psycopg-async"][str(c)]
            cells.append(f"{tps:.0f} ({vs_apg:.2f}, {vs_pg:.2f})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 s points, 1 and 8 tasks")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pool-size", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    args.argv = argv if argv is not None else __import__("sys").argv[1:]
    args.clients = [1, 8] if args.quick else [1, 8, 32]
    if args.quick:
        args.duration, args.repeats = 1.0, 1
    with EmbeddedPostgres(max_connections=100) as pg:
        server = f"embedded PostgreSQL {pg.server_version() // 10000} (fsync=off)"
        medians = asyncio.run(main_async(args, pg.url))
    text = report(medians, args, server)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "async.md").write_text(text)
    (args.out / "async.json").write_text(json.dumps(medians, indent=2))


if __name__ == "__main__":
    main()
