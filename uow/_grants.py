"""The application role's rights on the schema the migrations create (``uow.migrations``).

The two-role setup: the migrations run as the schema's owner (``UOW_MIGRATIONS_URL``)
and the application as a role that may only read and write rows (``DATABASE_URL``).
:func:`grant` gives that role its rights on the tables and sequences there now and,
through default privileges, on those the migrations role creates later;
:func:`on_version_apply` calls it after every migration step (an alembic hook for
``env.py``). Role and schema names are quoted as identifiers, never interpolated.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any

from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, text
from sqlalchemy.engine import make_url

from ._errors import ConfigurationError
from ._urls import normalize_url

__all__ = ["PermissionDenied", "application_roles", "grant", "on_version_apply", "revoke"]

logger = logging.getLogger("uow.migrations")

_TABLE_RIGHTS = "SELECT, INSERT, UPDATE, DELETE"
_SEQUENCE_RIGHTS = "USAGE, SELECT"  # nextval() for serial and identity columns


class PermissionDenied(ConfigurationError):
    """The migrations role lacks a privilege (SQLSTATE 42501); the message says which."""


def grant(
    connection: Connection,
    role: str,
    *,
    schema: str | None = None,
    read_only: Iterable[str] = ("alembic_version",),
) -> None:
    """Give ``role`` the rights an application needs on ``schema``: rows, not structure.

    ``USAGE`` on the schema; ``SELECT, INSERT, UPDATE, DELETE`` on its tables and
    ``USAGE, SELECT`` on its sequences; the same by default on the tables and
    sequences that the connection's role creates there later. No ``TRUNCATE``,
    ``REFERENCES``, ``TRIGGER`` or DDL. Idempotent; runs in the connection's transaction.

    Args:
        connection: a connection as the schema's owner (the migrations role).
        role: the application's role; it must exist.
        schema: the schema; None takes the connection's ``current_schema()``.
        read_only: tables in ``schema`` that ``role`` may only read (alembic's
            version table by default: the application may check the revision, not set it).

    Raises:
        ConfigurationError: ``role`` does not exist, or no schema is given or current.
        PermissionDenied: the connection's role may not grant these rights.
    """
    quote = connection.dialect.identifier_preparer.quote_identifier
    schema = _schema(connection, schema)
    if not _exists(connection, role):
        raise ConfigurationError(
            f"cannot grant the application's rights to role {role!r}: it does not exist; "
            "create it (CREATE ROLE ... LOGIN) or fix UOW_MIGRATIONS_GRANT_TO"
        )
    on, to = quote(schema), quote(role)
    statements = [
        f"GRANT USAGE ON SCHEMA {on} TO {to}",
        f"GRANT {_TABLE_RIGHTS} ON ALL TABLES IN SCHEMA {on} TO {to}",
        f"GRANT {_SEQUENCE_RIGHTS} ON ALL SEQUENCES IN SCHEMA {on} TO {to}",
        # Without FOR ROLE: the defaults apply to what the current role creates, which is
        # the role the migrations run as.
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA {on} GRANT {_TABLE_RIGHTS} ON TABLES TO {to}",
        f"ALTER DEFAULT PRIVILEGES IN SCHEMA {on} GRANT {_SEQUENCE_RIGHTS} ON SEQUENCES TO {to}",
    ]
    found = connection.execute(
        text(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = :schema AND c.relname = ANY(:names) ORDER BY 1"
        ),
        {"schema": schema, "names": list(read_only)},
    ).scalars()
    statements += [f"REVOKE INSERT, UPDATE, DELETE ON {on}.{quote(t)} FROM {to}" for t in found]
    _run(connection, statements)


def revoke(connection: Connection, role: str, *, schema: str | None = None) -> None:
    """Undo :func:`grant`: the rights and the default privileges it gave ``role``.

    Afterwards ``DROP ROLE`` works again (default privileges would block it). Only the
    rights the connection's role granted are revoked. Idempotent.
    """
    quote = connection.dialect.identifier_preparer.quote_identifier
    on, to = quote(_schema(connection, schema)), quote(role)
    _run(
        connection,
        [
            f"ALTER DEFAULT PRIVILEGES IN SCHEMA {on} REVOKE ALL ON TABLES FROM {to}",
            f"ALTER DEFAULT PRIVILEGES IN SCHEMA {on} REVOKE ALL ON SEQUENCES FROM {to}",
            f"REVOKE ALL ON ALL TABLES IN SCHEMA {on} FROM {to}",
            f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA {on} FROM {to}",
            f"REVOKE USAGE ON SCHEMA {on} FROM {to}",
        ],
    )


def application_roles(environ: Mapping[str, str] | None = None) -> tuple[tuple[str, ...], bool]:
    """The roles the migrations grant to, and whether they were named explicitly.

    ``UOW_MIGRATIONS_GRANT_TO`` (role names separated by commas; empty for none) when
    set; else, when ``UOW_MIGRATIONS_URL`` is set, the user of ``DATABASE_URL``; else none.
    """
    environ = os.environ if environ is None else environ
    if "UOW_MIGRATIONS_GRANT_TO" in environ:
        named = environ["UOW_MIGRATIONS_GRANT_TO"].split(",")
        return tuple(role.strip() for role in named if role.strip()), True
    if not environ.get("UOW_MIGRATIONS_URL") or not environ.get("DATABASE_URL"):
        return (), False
    user = make_url(normalize_url(environ["DATABASE_URL"])).username
    return ((user,) if user else ()), False


def on_version_apply(*, ctx: MigrationContext, heads: set[str], **_: Any) -> None:
    """Alembic hook: grant after each step, revoke when downgraded to base.

    For ``context.configure(on_version_apply=uow.migrations.on_version_apply)`` in
    ``env.py``. Runs in the step's transaction, as the migrations role; the roles are
    :func:`application_roles`, less that role itself. A role derived from
    ``DATABASE_URL`` that does not exist on this server is skipped with a warning; a
    role named in ``UOW_MIGRATIONS_GRANT_TO`` must exist. Offline (``--sql``) it does nothing.
    """
    if ctx.as_sql or ctx.connection is None:
        return
    connection = ctx.connection
    roles, explicit = application_roles()
    me = connection.execute(text("SELECT current_user")).scalar_one()
    for role in roles:
        if role == me:
            continue
        if not heads:
            revoke(connection, role)
            continue
        if not explicit and not _exists(connection, role):
            logger.warning(
                "not granting the application's rights to role %r (the user in DATABASE_URL):"
                " it does not exist on this server; set UOW_MIGRATIONS_GRANT_TO",
                role,
            )
            continue
        grant(connection, role, read_only=(ctx.version_table,))


def _exists(connection: Connection, role: str) -> bool:
    found = connection.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role})
    return found.first() is not None


def _schema(connection: Connection, schema: str | None) -> str:
    if schema is None:
        schema = connection.execute(text("SELECT current_schema()")).scalar()
    if not schema:
        raise ConfigurationError(
            "no schema to grant on: the search_path names no existing schema; pass schema="
        )
    return str(schema)


def _run(connection: Connection, statements: Iterable[str]) -> None:
    for statement in statements:
        # exec_driver_sql: no bind-parameter parsing, so a ':' in a quoted name stays put.
        connection.exec_driver_sql(statement)
