"""``uow top``: ``uow doctor``'s view of the server's sessions, refreshed live.

Every ``interval`` seconds one pooled connection (opened the way the application
opens them) reads the same activity as ``uow doctor`` (:func:`collect_activity`) and
redraws: transactions per second in the current database since the previous
refresh, connections by application and state, sessions idle in transaction, the
longest transactions and queries. The screen is cleared with ANSI codes only when the
output is a terminal; otherwise frames follow one another, for logs and tests.
"""

from __future__ import annotations

import time
from typing import TextIO

from sqlalchemy.exc import SQLAlchemyError

from .._database import Database
from .._errors import UnitOfWorkError
from .._settings import Settings
from .activity import Activity, collect_activity, render_activity
from .report import EXIT_OK, EXIT_UNREACHABLE
from .terminal import describe_failure, printable

__all__ = ["render_frame", "run"]

_CLEAR = "\x1b[H\x1b[2J"  # cursor home, then erase the screen


def render_frame(
    url: str, activity: Activity, previous: Activity | None, *, interval: float
) -> str:
    """One refresh of the view; rates need the ``previous`` refresh's activity."""
    clock = time.strftime("%H:%M:%S")
    lines = [f"uow top: {url}  {clock}  every {interval:g} s, Ctrl-C to quit", ""]
    if previous is None:
        rates = "- commits/s, - rollbacks/s (after the next refresh)"
    else:
        elapsed = max(activity.taken_at - previous.taken_at, 1e-6)
        commits = (activity.xact_commit - previous.xact_commit) / elapsed
        rollbacks = (activity.xact_rollback - previous.xact_rollback) / elapsed
        rates = f"{commits:.1f} commits/s, {rollbacks:.1f} rollbacks/s"
    # PostgreSQL publishes each backend's counts at most once a second, so short
    # intervals show bursts; this view's own reads count as rollbacks.
    total = sum(c["count"] for c in activity.connections)
    lines += [
        f"Database {activity.database}: {rates}; {total} client connections",
        "",
        *render_activity(
            activity.connections,
            activity.idle_in_transaction,
            activity.longest_transactions,
            activity.longest_queries,
        ),
    ]
    # The database's name is the server's text too.
    return printable("\n".join(lines).rstrip(), keep_newlines=True) + "\n"


def run(
    settings: Settings,
    *,
    interval: float = 1.0,
    iterations: int | None = None,
    out: TextIO,
    err: TextIO,
) -> int:
    """Show the live view until Ctrl-C, or for ``iterations`` refreshes.

    Args:
        settings: How the application connects.
        interval: Seconds between refreshes.
        iterations: Stop after this many refreshes; None runs until interrupted.
        out: Where the view goes; cleared between refreshes if it is a terminal.
        err: Where the one-line error goes when the server cannot be reached.

    Returns:
        The exit code: 0 (stopped, or interrupted with Ctrl-C), 2 unreachable.
    """
    clear = out.isatty()
    previous: Activity | None = None
    done = 0
    try:
        with Database(settings.replace(check_budget=False, pool_size=1)) as database:
            while iterations is None or done < iterations:
                if done:
                    time.sleep(interval)
                with database.engine.connect() as connection:
                    activity = collect_activity(connection.connection.dbapi_connection)
                frame = render_frame(settings.masked_url, activity, previous, interval=interval)
                out.write((_CLEAR if clear else ("\n" if done else "")) + frame)
                out.flush()
                previous = activity
                done += 1
    except KeyboardInterrupt:
        return EXIT_OK
    except (UnitOfWorkError, SQLAlchemyError) as exc:
        # The masked URL, then libpq's reason with the passwords hidden.
        reason = describe_failure(exc, settings)
        print(f"uow top: cannot reach {settings.masked_url}: {reason}", file=err)
        return EXIT_UNREACHABLE
    return EXIT_OK
