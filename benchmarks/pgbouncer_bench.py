"""uow behind PgBouncer (transaction mode) against plain SQLAlchemy behind it, in one run.

    python -m benchmarks.pgbouncer_bench [--quick] [--duration 5] [--repeats 3]

W1 (``UPDATE ... SET balance = balance + 1 WHERE id = :id``, commit) from 1, 8 and 32
threads. PgBouncer (the system's ``pgbouncer``) runs in transaction mode with 8 server
connections in front of a throwaway PostgreSQL; every client pool holds one connection
per thread. Variants:

- ``plain-pgbouncer``: a plain SQLAlchemy Session through PgBouncer, with only what
  correctness needs (``prepare_threshold=None``); no timeouts at all. The baseline.
- ``uow-pgbouncer``: ``UnitOfWork`` with ``UOW_PGBOUNCER=transaction``: one ``set_config``
  round trip per transaction for the three timeouts.
- ``uow-pgbouncer-role-timeouts``: the same with uow's timeouts off, as when they are set
  on the role (``ALTER ROLE ... SET``) instead.
- ``uow-direct``: ``UnitOfWork`` straight to PostgreSQL, for what PgBouncer itself costs.

Prints transactions per second and each variant's ratio to ``plain-pgbouncer``; writes
``benchmarks/results/pgbouncer.md`` and ``pgbouncer.json``. Client, PgBouncer and server
share the machine's cores, so only the ratios mean anything.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

import uow
from benchmarks.measure import run_clients
from uow.testing import EmbeddedPostgres, PgBouncer

ROWS = 10_000
SERVER_CONNECTIONS = 8
W1 = text("UPDATE bench_accounts SET balance = balance + 1 WHERE id = :id")

Transaction = Callable[[random.Random], None]


@contextmanager
def plain(url: str, clients: int) -> Iterator[Transaction]:
    engine = create_engine(
        url, pool_size=clients, connect_args={"prepare_threshold": None}, pool_pre_ping=False
    )

    def transaction(rng: random.Random) -> None:
        with Session(engine) as session, session.begin():
            session.execute(W1, {"id": rng.randrange(1, ROWS + 1)})

    try:
        yield transaction
    finally:
        engine.dispose()


@contextmanager
def with_uow(url: str, clients: int, **settings: Any) -> Iterator[Transaction]:
    database = uow.Database(uow.Settings(url=url, pool_size=clients, **settings))

    def transaction(rng: random.Random) -> None:
        with uow.UnitOfWork(database) as unit:
            unit.session.execute(W1, {"id": rng.randrange(1, ROWS + 1)})

    try:
        yield transaction
    finally:
        database.dispose()


NO_TIMEOUTS = {"statement_timeout": 0, "lock_timeout": 0, "idle_in_transaction_timeout": 0}


def variants(direct: str, bounced: str) -> dict[str, Callable[[int], Any]]:
    return {
        "plain-pgbouncer": lambda n: plain(bounced, n),
        "uow-pgbouncer": lambda n: with_uow(bounced, n, pgbouncer="transaction"),
        "uow-pgbouncer-role-timeouts": lambda n: with_uow(
            bounced, n, pgbouncer="transaction", **NO_TIMEOUTS
        ),
        "uow-direct": lambda n: with_uow(direct, n),
    }


def measure(args: argparse.Namespace, direct: str, bounced: str) -> dict[str, dict[str, float]]:
    found: dict[str, dict[int, list[float]]] = {}
    made = variants(direct, bounced)
    for repeat in range(args.repeats):
        for clients in args.clients:
            names = list(made)
            random.Random(repeat * 100 + clients).shuffle(names)  # noqa: S311 - order only
            for name in names:
                with made[name](clients) as transaction:
                    result = run_clients(
                        transaction,
                        random.Random,
                        clients,
                        warmup=0.5,
                        duration=args.duration,
                    )
                assert not result.errors, f"{name} at {clients} clients: {result.errors}"
                found.setdefault(name, {}).setdefault(clients, []).append(result.tps)
                print(f"  {name:28} {clients:3} clients: {result.tps:8.0f} tx/s", flush=True)
    return {
        name: {str(c): statistics.median(v) for c, v in by_clients.items()}
        for name, by_clients in found.items()
    }


def report(medians: dict[str, dict[str, float]], args: argparse.Namespace, server: str) -> str:
    lines = [
        "# W1 behind PgBouncer (transaction mode): uow vs plain SQLAlchemy",
        "",
        f"Command: `python -m benchmarks.pgbouncer_bench {' '.join(args.argv)}`  ",
        f"Server: {server}; PgBouncer with {SERVER_CONNECTIONS} server connections; one client "
        f"connection per thread; median of {args.repeats} runs of {args.duration:g} s per "
        "point. Client, PgBouncer and server share the machine's cores: read the ratios.",
        "",
        "| variant | "
        + " | ".join(f"{c} threads: tx/s (vs plain-pgbouncer)" for c in args.clients)
        + " |",
        "|---|" + "---|" * len(args.clients),
    ]
    base = medians["plain-pgbouncer"]
    for name, by_clients in medians.items():
        cells = [
            f"{by_clients[str(c)]:.0f} ({by_clients[str(c)] / base[str(c)]:.2f})"
            for c in args.clients
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 s points, 1 and 8 threads")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    args.argv = argv if argv is not None else sys.argv[1:]
    args.clients = [1, 8] if args.quick else [1, 8, 32]
    if args.quick:
        args.duration, args.repeats = 1.0, 1
    with (
        EmbeddedPostgres(max_connections=100) as pg,
        PgBouncer(pg.port, default_pool_size=SERVER_CONNECTIONS, password=pg.password) as bouncer,
    ):
        with uow.Database(uow.Settings(url=pg.url)) as db, uow.UnitOfWork(db) as unit:
            unit.session.execute(
                text("CREATE TABLE bench_accounts (id int PRIMARY KEY, balance bigint)")
            )
            unit.session.execute(
                text("INSERT INTO bench_accounts SELECT g, 0 FROM generate_series(1, :n) g"),
                {"n": ROWS},
            )
        server = f"embedded PostgreSQL {pg.server_version() // 10000} (fsync=off)"
        medians = measure(args, pg.url, bouncer.url)
    text_report = report(medians, args, server)
    print(text_report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pgbouncer.md").write_text(text_report)
    (args.out / "pgbouncer.json").write_text(json.dumps(medians, indent=2))


if __name__ == "__main__":
    main()
