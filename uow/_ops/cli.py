"""Command line: ``uow doctor``, ``uow top``, ``uow migrate`` (also ``python -m uow ...``)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from alembic.util import CommandError
from sqlalchemy.exc import SQLAlchemyError

from .. import migrations
from .._errors import ConfigurationError, UnitOfWorkError
from .._settings import Settings
from . import top
from .doctor import run
from .doctor_replicas import DEFAULT_MAX_REPLICA_LAG
from .report import EXIT_ACTION, EXIT_OK, EXIT_PERMISSION, EXIT_UNREACHABLE
from .terminal import describe_failure


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments and run the subcommand.

    Args:
        argv: The arguments without the program name; ``sys.argv[1:]`` when None.

    Returns:
        The exit code.
    """
    args = _parser().parse_args(argv)
    url = args.url
    if args.command == "migrate" and not url:
        url = os.environ.get("UOW_MIGRATIONS_URL")  # as the project's env.py does
    try:
        settings = Settings.from_env(**({"url": url} if url else {}))
    except ConfigurationError as exc:
        # ConfigurationError messages never contain the password.
        print(f"uow {args.command}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if args.command == "top":
        return top.run(
            settings,
            interval=args.interval,
            iterations=args.iterations,
            out=sys.stdout,
            err=sys.stderr,
        )
    if args.command == "migrate":
        return _migrate(settings, args.action, getattr(args, "revision", None), args.config)
    return run(
        settings,
        as_json=args.json,
        idle_threshold=args.idle_threshold,
        max_replica_lag=args.max_replica_lag,
        out=sys.stdout,
        err=sys.stderr,
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="uow", description="uow's command line tools.")
    commands = parser.add_subparsers(dest="command", required=True)
    doctor = commands.add_parser(
        "doctor",
        help="check the server and the settings; exit 1 if something needs action",
        description="Connect with the current settings (DATABASE_URL, UOW_*) and report the "
        "server's limits, who holds connections, open transactions, the connection budget, "
        "replication and each read replica's lag (UOW_REPLICA_URLS), and settings that need "
        "action. Exit 0: all well; 1: something needs action; "
        "2: the server cannot be reached or the settings are invalid.",
    )
    doctor.add_argument("--url", help="PostgreSQL URL (default: DATABASE_URL)")
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")
    doctor.add_argument(
        "--idle-threshold",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="a session idle in transaction longer than this needs action (default 60)",
    )
    doctor.add_argument(
        "--max-replica-lag",
        type=float,
        default=DEFAULT_MAX_REPLICA_LAG,
        metavar="SECONDS",
        help="a read replica lagging more than this needs action (default 30)",
    )
    top = commands.add_parser(
        "top",
        help="a live view of the server's sessions and transaction rate",
        description="Refresh doctor's view of connections, sessions idle in transaction and "
        "the longest transactions and queries, with transactions per second, until Ctrl-C. "
        "Exit 0 when stopped; 2 when the server cannot be reached.",
    )
    top.add_argument("--url", help="PostgreSQL URL (default: DATABASE_URL)")
    top.add_argument(
        "--interval",
        type=_positive_float,
        default=1.0,
        metavar="SECONDS",
        help="seconds between refreshes (default 1)",
    )
    top.add_argument(
        "--iterations",
        type=_positive_int,
        metavar="N",
        help="stop after N refreshes (default: run until Ctrl-C)",
    )
    migrate = commands.add_parser(
        "migrate",
        help="run the project's alembic migrations (upgrade, downgrade, current, check)",
        description="Alembic's commands on the project's migrations, through uow.migrations. "
        "The URL is --url, else UOW_MIGRATIONS_URL, else DATABASE_URL. Exit 0: done; "
        "1: alembic refused (not at head, models and migrations differ); 2: bad settings "
        "or the server cannot be reached; 3: permission denied (the role may not change "
        "the schema: use its owner's URL in UOW_MIGRATIONS_URL).",
    )
    migrate.add_argument(
        "--url", help="PostgreSQL URL (default: UOW_MIGRATIONS_URL, else DATABASE_URL)"
    )
    migrate.add_argument(
        "--config", metavar="PATH", help="the alembic.ini to use (default: ./alembic.ini)"
    )
    actions = migrate.add_subparsers(dest="action", required=True)
    upgrade = actions.add_parser("upgrade", help="upgrade to REVISION (default head)")
    upgrade.add_argument("revision", nargs="?", default="head")
    downgrade = actions.add_parser("downgrade", help="downgrade to REVISION ('base' for none)")
    downgrade.add_argument("revision")
    actions.add_parser("current", help="print the database's revision")
    actions.add_parser("check", help="exit 1 unless at head with models matching migrations")
    return parser


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return value


def _migrate(settings: Settings, action: str, revision: str | None, config: str | None) -> int:
    prefix = f"uow migrate {action}"
    try:
        before = migrations.current(settings, config=config)
        if action == "upgrade":
            migrations.upgrade(settings, revision or "head", config=config)
        elif action == "downgrade":
            migrations.downgrade(settings, revision or "", config=config)
        elif action == "check":
            migrations.check(settings, config=config)
        after = migrations.current(settings, config=config)
    except migrations.PermissionDenied as exc:
        # The server's reason and the role's name; never the URL's password.
        print(f"{prefix}: {settings.masked_url}: {exc}", file=sys.stderr)
        return EXIT_PERMISSION
    except ConfigurationError as exc:
        print(f"{prefix}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except CommandError as exc:
        # Alembic's messages name revisions and schema objects, never the URL.
        print(f"{prefix}: {exc}", file=sys.stderr)
        return EXIT_ACTION
    except (UnitOfWorkError, SQLAlchemyError) as exc:
        # The masked URL, then libpq's reason with the passwords hidden.
        reason = describe_failure(exc, settings)
        print(f"{prefix}: cannot reach {settings.masked_url}: {reason}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if action in ("upgrade", "downgrade"):
        print(f"{settings.masked_url}: {before or '<base>'} -> {after or '<base>'}")
    elif action == "check":
        print(f"{settings.masked_url}: at head {after}; the models match the migrations")
    else:
        print(after or "<base>")
    return EXIT_OK
