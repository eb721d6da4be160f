"""The process-wide default Database, created lazily and replaceable."""

from __future__ import annotations

import threading
from typing import Any

from ._database import Database
from ._engine.fork import at_fork_in_child
from ._settings import Settings

__all__ = ["configure", "get_database"]

_lock = threading.Lock()
_default: Database | None = None


def configure(url: str | None = None, *, check: bool = False, **settings: Any) -> Database:
    """Set the process-wide default database used by ``UnitOfWork()``.

    Settings not given here are read from the environment (``DATABASE_URL``,
    ``UOW_*``), so ``configure(pool_size=20)`` keeps the URL from ``DATABASE_URL``.
    A previous default is disposed: its idle connections are closed now and the
    ones in use when they are returned.

    Args:
        url: the database URL; else ``DATABASE_URL``.
        check: check the connection budget now (:meth:`Database.check`): the call to
            make when a worker boots, so a worker whose pool does not fit fails to start.
        **settings: :class:`Settings` fields.

    Returns:
        The new default :class:`Database`.

    Raises:
        ConfigurationError: a setting is invalid, or with ``check=True`` the budget does
            not fit; the previous default is then kept.
    """
    global _default
    if url is not None:
        settings["url"] = url
    database = Database(Settings.from_env(**settings))
    if check:
        try:
            database.check()
        except BaseException:
            database.dispose()
            raise
    with _lock:
        previous, _default = _default, database
    if previous is not None:
        previous.dispose()
    return database


def get_database() -> Database:
    """Return the default database, building it from the environment on first use."""
    global _default  # noqa: PLW0603
    database = _default
    if database is not None:
        return database
    with _lock:
        if _default is None:
            _default = Database(Settings.from_env())
        return _default


def _swap_default(database: Database | None) -> Database | None:
    """Install ``database`` as the default without disposing the old one; returns it."""
    global _default
    with _lock:
        previous, _default = _default, database
    return previous


def _new_lock_in_child() -> None:
    global _lock  # noqa: PLW0603 - a lock held by another thread at fork time stays held
    _lock = threading.Lock()


at_fork_in_child(_new_lock_in_child)
