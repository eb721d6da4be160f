"""Alembic environment for the example bank app, configured from uow's Settings.

The URL is the first of these that is set:

1. ``config.attributes["uow_url"]``: what :mod:`uow.migrations` passes (an attribute,
   not ``sqlalchemy.url``: configparser would read a ``%`` in a password as interpolation);
2. ``UOW_MIGRATIONS_URL``: lets schema changes run under a role with DDL rights while
   the application runs under one without;
3. ``DATABASE_URL``, through :meth:`uow.Settings.from_env`.

Whichever it is, :class:`uow.Settings` normalises it (``postgres://`` selects psycopg 3)
and the other ``UOW_*`` variables apply (``UOW_CONNECT_TIMEOUT``, ``UOW_ECHO``).
Migrations run on one unpooled connection (:func:`uow.migrations.engine`) named
``uow-migrations`` in ``pg_stat_activity``, with ``lock_timeout`` set from
``UOW_MIGRATIONS_LOCK_TIMEOUT`` (seconds, default 5, 0 disables it): DDL waiting for a
lock on a busy table fails fast instead of making every request queue behind it.
``statement_timeout`` is left to the server: rewriting a large table may legitimately
take minutes. The URL's own parameters (``application_name``, ``options=-c ...``) are
kept and win over these defaults, as for the application's connections. Offline mode (``--sql``)
needs no database and reads no URL.

Two roles: when the migrations run as another role than the application's, each step
grants the application's role its rights (rows of the tables and sequences, by default
also on those created later) and a downgrade to base revokes them
(:func:`uow.migrations.on_version_apply`). The role is ``UOW_MIGRATIONS_GRANT_TO`` (names
separated by commas, empty for none) or else, with ``UOW_MIGRATIONS_URL`` set, the user
of ``DATABASE_URL``. The URL is never logged: alembic prints it only
through its password-masking helper, and this script never prints it.
"""

from __future__ import annotations

import math
import os
from logging.config import fileConfig

from alembic import context

import uow.migrations
from examples.bank.models import Base
from uow import ConfigurationError, Settings

config = context.config
target_metadata = Base.metadata

# The command line configures logging from alembic.ini; uow.migrations sets
# configure_logger=False so that the host application's logging is left alone.
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def lock_timeout() -> float | None:
    """Seconds DDL may wait for a lock (``UOW_MIGRATIONS_LOCK_TIMEOUT``); None if unset."""
    raw = os.environ.get("UOW_MIGRATIONS_LOCK_TIMEOUT", "").strip()
    if not raw:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not (seconds == 0 or 0.001 <= seconds <= 86400):
        raise ConfigurationError(
            f"UOW_MIGRATIONS_LOCK_TIMEOUT={raw!r} is invalid; use a number of seconds from"
            " 0.001 to 86400, such as 5 or 0.5, or 0 to disable it"
        )
    return seconds


def migration_settings() -> Settings:
    """Settings for the migration connection (URL precedence in the module docstring)."""
    # UOW_MIGRATIONS_* configure this script, not the application's pool:
    # Settings.from_env() would warn about them as unknown settings.
    environ = {k: v for k, v in os.environ.items() if not k.startswith("UOW_MIGRATIONS_")}
    url = config.attributes.get("uow_url") or os.environ.get("UOW_MIGRATIONS_URL")
    return Settings.from_env(environ, **({"url": url} if url else {}))


def include_name(name: str | None, type_: str, parent_names: object) -> bool:
    """Leave procrastinate's tables to its own migrations: not drift for ``alembic check``."""
    # They are created from procrastinate's SQL (migrations/versions/8d9434178edf_...),
    # not declared as models; autogenerate would otherwise propose dropping them.
    return not (type_ == "table" and name is not None and name.startswith("procrastinate_"))


def run_migrations_offline() -> None:
    """Write the migrations' SQL to stdout (``alembic upgrade head --sql``)."""
    # Only the dialect matters here; a URL with a password has no business in a script.
    context.configure(
        url="postgresql+psycopg://",
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        compare_type=True,
        transaction_per_migration=True,
    )
    seconds = lock_timeout()
    seconds = uow.migrations.DEFAULT_LOCK_TIMEOUT if seconds is None else seconds
    context.execute(f"SET lock_timeout = {round(seconds * 1000)}")
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run the migrations on the database, one transaction per migration."""
    engine = uow.migrations.engine(migration_settings(), lock_timeout=lock_timeout())
    try:
        with engine.connect() as connection:
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                include_name=include_name,
                compare_type=True,
                transaction_per_migration=True,
                on_version_apply=uow.migrations.on_version_apply,
            )
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
