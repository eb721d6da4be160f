"""URLs as uow takes them: normalized to psycopg 3, checked, and masked for display.

libpq's forms of several hosts (``postgresql://u@h1:p1,h2:p2/db``) are rewritten into
query parameters SQLAlchemy's URL can hold; a password given as ``?password=`` moves to
where every renderer masks it; nothing here ever echoes an unparsable URL, which may
hold a password.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

import psycopg
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from ._conninfo import FORMS, check_host, hosts, user_parameters
from ._errors import ConfigurationError

__all__ = [
    "mask_engine_options",
    "mask_url",
    "normalize_replicas",
    "normalize_url",
    "secret_parameters",
]

_DRIVER = "postgresql+psycopg"
_ACCEPTED_SCHEMES = ("postgres", "postgresql", "postgresql+psycopg")


@functools.cache
def secret_parameters() -> frozenset[str]:
    """The libpq parameters whose values are secrets, never to be shown."""
    # libpq marks its secrets with dispchar "*" (password, sslpassword, oauth_client_secret);
    # the scram_*_key options it hides as debug ones stand in for the password too.
    return frozenset(
        option.keyword.decode()
        for option in pq.Conninfo.get_defaults()
        if option.dispchar == b"*" or option.keyword.startswith(b"scram_")
    ) | {"password", "sslpassword"}


def mask_engine_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """``engine_options`` for display: the values of libpq's secret ``connect_args`` hidden."""
    shown = dict(options)
    connect_args = shown.get("connect_args")
    if isinstance(connect_args, Mapping):
        secret = secret_parameters()
        shown["connect_args"] = {
            key: "***" if key in secret else value for key, value in connect_args.items()
        }
    return shown


def mask_url(url: str | URL) -> str:
    """Render a URL with its passwords hidden (``?password=`` too); anything unparsable
    is hidden whole."""
    try:
        parsed = url if isinstance(url, URL) else make_url(_netloc_hosts(url.strip(), "url"))
    except (ArgumentError, ValueError, ConfigurationError):
        return "<unparsable URL>"
    if parsed.host is not None and "@" in parsed.host:
        return "<unparsable URL>"  # the tail of a password with an unencoded "@"
    secrets = [key for key in parsed.query if key.lower() in secret_parameters()]
    if secrets:
        parsed = parsed.update_query_dict(dict.fromkeys(secrets, "***"))
    shown = parsed.render_as_string(hide_password=True).replace("=%2A%2A%2A", "=***")
    # Host and port lists read as written (h1,h2; h1:p1), for messages only.
    return shown.replace("%2C", ",").replace("%3A", ":")


_NETLOC = re.compile(r"^([A-Za-z0-9+.-]+)://([^/?]*)(.*)$", re.DOTALL)


def _unparsable(name: str) -> ConfigurationError:
    # The raw text may contain a password: never echo it.
    return ConfigurationError(
        f"{name} could not be parsed; expected postgresql://user:password@host:5432/dbname"
        " (percent-encode special characters in the password: @ as %40, # as %23, / as %2F)"
    )


def _netloc_hosts(text: str, name: str) -> str:
    """``postgresql://u@h1:p1,h2:p2/db`` (libpq's form) as ``...?host=h1,h2&port=p1,p2``."""
    match = _NETLOC.match(text)
    if match is None:
        return text
    scheme, netloc, rest = match.groups()
    if netloc.count("@") > 1:
        raise _unparsable(name)  # an unencoded "@" in the password
    if "," not in netloc.rpartition("@")[2] or scheme not in _ACCEPTED_SCHEMES:
        return text
    try:
        # libpq's own parser: SQLAlchemy's URL has room for one host only.
        params = conninfo_to_dict(f"postgresql://{netloc}{rest}")
    except psycopg.Error:
        raise _unparsable(name) from None
    found = {k: str(v) for k, v in params.items() if v is not None}
    query = {k: v for k, v in found.items() if k not in ("user", "password", "dbname")}
    if not query.get("port", "").strip(","):
        query.pop("port", None)
    return URL.create(
        scheme,
        username=found.get("user"),
        password=found.get("password"),
        database=found.get("dbname"),
        query=query,
    ).render_as_string(hide_password=False)


def normalize_url(raw: object, name: str = "url", variable: str = "DATABASE_URL") -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise ConfigurationError(
            f"{name} is empty; set {variable} to postgresql://user:password@host:5432/dbname"
        )
    try:
        url = make_url(_netloc_hosts(raw.strip(), name))
    except (ArgumentError, ValueError):
        raise _unparsable(name) from None
    if url.host is not None and "@" in url.host:
        raise _unparsable(name)  # the tail of a password with an unencoded "@"
    if url.drivername not in _ACCEPTED_SCHEMES:
        raise ConfigurationError(
            f"{name} {mask_url(url)!r} uses driver {url.drivername!r}; uow needs PostgreSQL "
            f"through psycopg 3: use one of {', '.join(s + '://' for s in _ACCEPTED_SCHEMES)}"
        )
    if url.port is not None and not 0 < url.port < 65536:
        raise ConfigurationError(f"{name} {mask_url(url)!r} has port {url.port}; use 1 to 65535")
    url = url.set(drivername=_DRIVER)
    query = dict(url.query)
    password = query.pop("password", None)
    if password is not None:
        # Where every renderer (SQLAlchemy's reprs included) masks it; libpq lets the
        # query's password win over the one before the "@", and so does this.
        url = url.set(password=password[-1] if isinstance(password, tuple) else password)
        url = url.set(query=query)
    if url.host is not None and url.host[:3].upper() == "%2F":
        # A percent-encoded socket directory: libpq decodes it, SQLAlchemy does not.
        # (URL.set() treats None as "unchanged": _replace is the namedtuple's own.)
        url = url._replace(host=None).update_query_dict({"host": unquote(url.host)})
    params = user_parameters(url, {})
    for host, port in hosts(params):
        if ":" in host and not _is_ip(host):
            raise ConfigurationError(
                f"{name} {mask_url(url)!r} has host {host!r}: libpq's host parameter takes "
                f"no port; {FORMS}"
            )
        check_host(host)
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            raise ConfigurationError(f"{name} {mask_url(url)!r} has port {port!r}; use 1 to 65535")
    return url.render_as_string(hide_password=False)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def normalize_replicas(raw: object) -> tuple[str, ...]:
    items: list[object]
    if isinstance(raw, str):
        items = [part for part in raw.split(",") if part.strip()]
    elif isinstance(raw, list | tuple):
        items = list(raw)
    else:
        raise ConfigurationError(
            f"replica_urls must be a list of URLs or a comma-separated string, not "
            f"{type(raw).__name__}"
        )
    return tuple(
        normalize_url(item, f"replica_urls[{i}]", "UOW_REPLICA_URLS")
        for i, item in enumerate(items)
    )
