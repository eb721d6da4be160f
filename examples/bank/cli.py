"""The bank's command line: ``python -m examples.bank <command>``.

The database comes from ``DATABASE_URL`` (and the ``UOW_*`` settings), through
uow's default database. Results go to stdout, one fact per line. Exit status: 0 on
success, 1 on a domain or database error (one line on stderr, no traceback), 2 on
bad usage. Writes wait out a failover for up to ``UOW_FAILOVER_WAIT`` seconds (see
:func:`_writing`); reads report an unreachable server at once.
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from collections.abc import Callable, Sequence
from typing import TypeVar

from psycopg import errors as pg_errors
from sqlalchemy.exc import DBAPIError

from uow import UnitOfWorkError, get_database, run_transaction

from . import services
from .health import MIGRATE_HINT
from .services import BankError
from .unit_of_work import BankUnitOfWork

__all__ = ["main"]

T = TypeVar("T")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status."""
    args = _parser().parse_args(argv)
    command: Callable[[argparse.Namespace], int] = args.command
    try:
        return command(args)
    except (BankError, UnitOfWorkError, DBAPIError) as exc:
        print(f"error: {_explain(exc)}", file=sys.stderr)
        return 1


def _explain(exc: Exception) -> str:
    """One line that says what went wrong and, where it is known, what to do."""
    # uow's own errors already say it in their first line (unreachable, login refused...).
    cause = exc.orig if isinstance(exc, DBAPIError) else exc
    if isinstance(cause, pg_errors.UndefinedTable | pg_errors.InvalidSchemaName):
        return f"the database has no bank tables; {MIGRATE_HINT}"
    lines = str(cause).strip().splitlines()
    first = lines[0] if lines else type(cause).__name__
    if isinstance(cause, pg_errors.InsufficientPrivilege):
        return (
            f"{first}; the schema's owner must grant this role its rights"
            " (see docs/operations/migrations.md)"
        )
    return first


def _writing(write: Callable[[], T]) -> T:
    """Run a write service, again in a fresh transaction while the database fails over.

    ``run_transaction`` opens the unit of work and the service's own ``BankUnitOfWork()``
    joins it, so a server that is down, failing over, full or read-only, or a connection
    lost before COMMIT, is retried for up to ``UOW_FAILOVER_WAIT`` seconds (10 by
    default; its ``wait=`` would override it). Nothing was written in those cases, and
    the idempotency key makes a deposit or transfer apply once whatever happens.
    """
    return run_transaction(lambda _unit: write(), unit_of_work=BankUnitOfWork)


def _open(args: argparse.Namespace) -> int:
    account_id = _writing(lambda: services.open_account(BankUnitOfWork(), args.owner, args.initial))
    print(account_id)  # alone on its line, for scripts: ID=$(python -m examples.bank open ann)
    return 0


def _deposit(args: argparse.Namespace) -> int:
    key = args.key or _new_key()
    balance = _writing(
        lambda: services.deposit(BankUnitOfWork(), args.account_id, args.amount, key=key)
    )
    print(f"account {args.account_id} balance {balance} (key {key})")
    return 0


def _transfer(args: argparse.Namespace) -> int:
    key = args.key or _new_key()
    result = _writing(
        lambda: services.transfer(
            BankUnitOfWork(), args.source_id, args.target_id, args.amount, key=key
        )
    )
    replayed = "; already done earlier, nothing changed" if result.replayed else ""
    print(
        f"transfer {result.id}: {result.amount} from account {result.source_id} "
        f"to account {result.target_id} (key {result.key}{replayed})"
    )
    return 0


def _statement(args: argparse.Namespace) -> int:
    unit = BankUnitOfWork(readonly=True, isolation="REPEATABLE READ")  # one snapshot
    found = services.statement(unit, args.account_id)
    print(f"account {found.account_id} ({found.owner}) balance {found.balance}")
    for line in found.lines:
        other = f" account {line.counterparty_id}" if line.counterparty_id is not None else ""
        print(f"  {line.entry_id:>6}  {line.kind:<12} {line.amount:>+14}{other}  key {line.key}")
    return 0


def _audit(args: argparse.Namespace) -> int:
    result = services.audit(BankUnitOfWork(readonly=True))
    verdict = "ok" if result.ok else "FAILED"
    print(
        f"{verdict}: {result.accounts} accounts, balances {result.total_balance}, "
        f"deposits {result.total_deposits}, {result.negative} negative, "
        f"{result.mismatched} not matching the ledger"
    )
    if result.examples:
        print("accounts to check: " + ", ".join(map(str, result.examples)))
    return 0 if result.ok else 1


def _serve(args: argparse.Namespace) -> int:
    # Imported here: the HTTP server is an optional extra the other commands do not need.
    import uvicorn  # noqa: PLC0415

    from .logs import logging_config  # noqa: PLC0415

    # Each worker is a process with its own pool: uow's budget check must count them all.
    # An explicit UOW_PROCESSES wins (it may count workers on other hosts too).
    os.environ.setdefault("UOW_PROCESSES", str(args.workers))
    uvicorn.run(
        # An import string, so that each worker process builds its own app and pool.
        "examples.bank.api:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_config=logging_config(args.log_level),
        access_log=args.access_log,
    )
    return 0


def _worker(args: argparse.Namespace) -> int:
    # Imported here: procrastinate is needed by this command only.
    import uow.jobs  # noqa: PLC0415

    from .jobs import app  # noqa: PLC0415

    # Fail at once, with the arithmetic, if these workers' connections do not fit in what
    # the server has left (web workers' connections count as in use).
    uow.jobs.check_budget(processes=args.processes)
    # procrastinate's worker: SIGTERM or Ctrl-C stops it fetching jobs and lets the running
    # ones finish (for up to --shutdown-timeout seconds) before it exits.
    app.run_worker(
        concurrency=args.concurrency,
        queues=args.queues or None,
        name=f"bank-worker[{os.getpid()}]",
        shutdown_graceful_timeout=args.shutdown_timeout,
    )
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from uow import migrations  # noqa: PLC0415 - alembic is needed by this command only

    # The schema's owner when UOW_MIGRATIONS_URL names it; the application's role gets its
    # rights from the migrations (docs/operations/migrations.md).
    owner = os.environ.get("UOW_MIGRATIONS_URL")
    migrations.upgrade(owner or get_database(), "head")
    print("database is at the latest revision")
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def _new_key() -> str:
    # A fresh key per invocation: rerun with --key to make a retry safe.
    return f"cli-{uuid.uuid4().hex}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m examples.bank",
        description="A small bank on uow. Amounts are integer cents. Reads DATABASE_URL.",
    )
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    def command(
        name: str, run: Callable[[argparse.Namespace], int], text: str
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=text, description=text)
        sub.set_defaults(command=run)
        return sub

    sub = command("open", _open, "open an account; prints its id")
    sub.add_argument("owner")
    sub.add_argument("--initial", type=int, default=0, help="opening deposit (default 0)")

    sub = command("deposit", _deposit, "deposit money into an account")
    sub.add_argument("account_id", type=int, metavar="ID")
    sub.add_argument("amount", type=int, metavar="AMOUNT")
    sub.add_argument("--key", help="idempotency key (default: a new random one)")

    sub = command("transfer", _transfer, "move money between two accounts")
    sub.add_argument("source_id", type=int, metavar="SRC")
    sub.add_argument("target_id", type=int, metavar="DST")
    sub.add_argument("amount", type=int, metavar="AMOUNT")
    sub.add_argument("--key", help="idempotency key (default: a new random one)")

    sub = command("statement", _statement, "show an account's balance and movements")
    sub.add_argument("account_id", type=int, metavar="ID")

    command("audit", _audit, "check every balance against the ledger; exit 1 if one is off")

    sub = command("serve", _serve, "run the HTTP API with uvicorn")
    sub.add_argument("--host", default="127.0.0.1")
    sub.add_argument("--port", type=int, default=8000)
    sub.add_argument(
        "--workers",
        type=_positive,
        default=1,
        help="worker processes (1); sets UOW_PROCESSES",
    )
    sub.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"], help="(info)"
    )
    sub.add_argument(
        "--no-access-log", dest="access_log", action="store_false", help="no line per request"
    )

    sub = command("worker", _worker, "run the job workers (statements) until SIGTERM or Ctrl-C")
    sub.add_argument(
        "--concurrency", type=_positive, default=2, help="jobs run at once, in threads (2)"
    )
    sub.add_argument(
        "--processes",
        type=_positive,
        default=1,
        help="job worker processes that will run, for the connection budget check (1)",
    )
    sub.add_argument(
        "--queue",
        dest="queues",
        action="append",
        metavar="NAME",
        help="a queue to take jobs from (repeatable; default: every queue)",
    )
    sub.add_argument(
        "--shutdown-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long a stopping worker waits for running jobs before aborting them (60)",
    )

    command(
        "migrate",
        _migrate,
        "upgrade the database schema to the latest revision, as UOW_MIGRATIONS_URL's role "
        "if set (it grants DATABASE_URL's role its rights)",
    )
    return parser
