"""Command line: ``uow doctor`` (also ``python -m uow doctor``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ._doctor import DEFAULT_MAX_REPLICA_LAG, EXIT_UNREACHABLE, run
from ._errors import ConfigurationError
from ._settings import Settings


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments and run the subcommand.

    Args:
        argv: The arguments without the program name; ``sys.argv[1:]`` when None.

    Returns:
        The exit code.
    """
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
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env(**({"url": args.url} if args.url else {}))
    except ConfigurationError as exc:
        # ConfigurationError messages never contain the password.
        print(f"uow doctor: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    return run(
        settings,
        as_json=args.json,
        idle_threshold=args.idle_threshold,
        max_replica_lag=args.max_replica_lag,
        out=sys.stdout,
        err=sys.stderr,
    )


if __name__ == "__main__":
    sys.exit(main())
