"""libpq parameters: what the user wrote, what uow adds, and which wins.

The URL is the user's. Every libpq parameter in it (``?options=``,
``application_name``, ``connect_timeout``, ``keepalives_idle``, ``sslmode``,
``target_session_attrs``, several hosts...) reaches the server as written; uow only
fills in what the user left unset. The precedence, in one place:

=========================  ==================================  ==========================
parameter                  set by the user in                  else uow's default
=========================  ==================================  ==========================
``application_name``       URL, or ``UOW_APPLICATION_NAME``    ``uow:<program>``
``connect_timeout``        URL, or ``UOW_CONNECT_TIMEOUT``     5 s
``options -c
statement_timeout``        URL, or ``UOW_STATEMENT_TIMEOUT``   30 s
``options -c
lock_timeout``             URL, or ``UOW_LOCK_TIMEOUT``        10 s
``options -c idle_in_
transaction_session_
timeout``                  URL, or
                           ``UOW_IDLE_IN_TRANSACTION_TIMEOUT``  60 s
other ``options -c``       URL                                 (none)
``keepalives*``            URL                                 1, idle 30, interval 10,
                                                               count 3
``tcp_user_timeout``       URL                                 statement timeout + 10 s,
                                                               in ms (none when the
                                                               statement timeout is off)
anything else              URL                                 libpq's default
=========================  ==================================  ==========================

A URL value is adopted by :class:`~uow.Settings` (``settings.statement_timeout`` is what
the server got, so ``uow doctor``, ``UnitOfWork(timeout=)`` and PgBouncer's ``SET
LOCAL`` agree with it). A setting left at its default yields to the URL; a setting given
another value *and* a different value in the URL is two contradicting instructions, and
raises :class:`~uow.ConfigurationError` naming both rather than silently dropping one.
``engine_options={"connect_args": {...}}`` counts as part of the URL and overrides it
per key, as in SQLAlchemy; its ``options`` are merged like the URL's.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from ._engine.timeouts import startup_timeouts
from ._engine.watchdog import TCP_GRACE
from ._errors import ConfigurationError
from ._specs import spec_of

if TYPE_CHECKING:
    from ._settings import Settings

__all__ = [
    "FORMS",
    "KEEPALIVES",
    "adopt_url_values",
    "check_host",
    "connect_args",
    "connect_kwargs",
    "hosts",
    "merge_options",
    "server_settings",
    "taken_from_url",
    "tcp_user_timeout",
    "url_values",
    "user_parameters",
]

# TCP keepalives: without them a connection to a host that vanished (failover, a
# dropped NAT entry) hangs until the kernel gives up, about two hours later; and
# load balancers drop connections idle for 4 to 6 minutes.
KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}


def tcp_user_timeout(statement_timeout: float) -> dict[str, int]:
    """libpq's ``tcp_user_timeout`` (ms) for this statement timeout; none when it is off.

    A server's kernel acknowledges data at once, even while a statement runs: data left
    unacknowledged longer than any statement may run means the peer is gone, and
    without this limit the kernel retransmits for about 15 minutes before the socket
    fails. Linux also applies it to a server that keeps its receive window shut (one slow
    to consume a large COPY), hence never less than the statement timeout.
    """
    if not statement_timeout:
        return {}
    return {"tcp_user_timeout": round((statement_timeout + TCP_GRACE) * 1000)}


# uow's settings that a server parameter in ``options`` sets (see _timeouts).
_OPTION_SETTINGS = {
    "statement_timeout": "statement_timeout",
    "lock_timeout": "lock_timeout",
    "idle_in_transaction_session_timeout": "idle_in_transaction_timeout",
}
# PostgreSQL's units for time parameters; a bare number is milliseconds for these.
_TIME_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*(us|ms|s|min|h|d)?\s*$")
_LABEL = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")
FORMS = (
    "write several hosts as postgresql://user@h1:p1,h2:p2/db, ?host=h1,h2&port=p1,p2 "
    "or ?host=h1:p1&host=h2:p2"
)


def user_parameters(url: URL, engine_options: Mapping[str, Any]) -> dict[str, Any]:
    """The libpq parameters the user gave: the URL's, then ``connect_args`` over them."""
    try:
        _, params = url.get_dialect()().create_connect_args(url)
    except ArgumentError as exc:
        # SQLAlchemy's messages here are about the host/port forms, never the password.
        raise ConfigurationError(f"url: {exc}; {FORMS}") from None
    extra = engine_options.get("connect_args") or {}
    return {**params, **extra}


def server_settings(options: str) -> dict[str, str]:
    """The ``-c name=value`` (and ``--name=value``) settings in a libpq ``options`` string."""
    words = _split_options(options)
    found: dict[str, str] = {}
    i = 0
    while i < len(words):
        word = words[i]
        if word == "-c" and i + 1 < len(words):
            pair, i = words[i + 1], i + 2
        elif word.startswith(("-c", "--")):
            pair, i = word[2:], i + 1
        else:
            i += 1
            continue
        name, sep, value = pair.partition("=")
        if sep:
            # The server folds case and reads "-" as "_" in these names.
            found[name.strip().lower().replace("-", "_")] = value
    return found


def url_values(params: Mapping[str, Any]) -> dict[str, Any]:
    """uow settings the user's libpq parameters set, by setting name, as uow's types."""
    found: dict[str, Any] = {}
    name = params.get("application_name")
    if name is not None:
        found["application_name"] = str(name)
    timeout = params.get("connect_timeout")
    if timeout is not None:
        try:
            seconds = float(int(str(timeout).strip()))
        except ValueError:
            seconds = math.nan
        if not 1 <= seconds <= 3600:
            raise ConfigurationError(
                f"connect_timeout={timeout!r} in the URL is invalid; use a whole number of "
                "seconds from 2 to 3600 (0 would wait forever for a dead host)"
            )
        found["connect_timeout"] = seconds
    for parameter, value in server_settings(str(params.get("options") or "")).items():
        setting = _OPTION_SETTINGS.get(parameter)
        if setting is not None:
            found[setting] = _seconds(parameter, value)
    return found


def merge_options(user: str, defaults: Mapping[str, str]) -> str:
    """The user's ``options`` with uow's ``-c`` settings added for what it leaves unset."""
    given = server_settings(user)
    added = [f"-c {name}={value}" for name, value in defaults.items() if name not in given]
    return " ".join(part for part in (user.strip(), *added) if part)


def connect_args(settings: Settings, timeouts: Mapping[str, str]) -> dict[str, Any]:
    """``create_engine(connect_args=)``: uow's defaults where the user set nothing.

    SQLAlchemy passes the URL's own parameters to psycopg and lays these over them,
    so only what the URL leaves unset is here, plus ``options`` merged (see the module's
    precedence table). ``timeouts`` are the server settings uow sends in ``options``.
    """
    return _uow_args(settings, _user(settings), timeouts)


def _user(settings: Settings) -> dict[str, Any]:
    return user_parameters(make_url(settings.url), settings.engine_options)


def _uow_args(
    settings: Settings, user: Mapping[str, Any], timeouts: Mapping[str, str]
) -> dict[str, Any]:
    defaults: dict[str, Any] = {
        "connect_timeout": max(2, math.ceil(settings.connect_timeout)),
        "application_name": settings.application_name,
        **KEEPALIVES,
        **tcp_user_timeout(settings.statement_timeout),
    }
    args = {key: value for key, value in defaults.items() if key not in user}
    if settings.pgbouncer == "transaction":
        # A statement prepared on one server connection is missing on the next, or names
        # another client's statement there: errors, or the wrong SQL run without error.
        args["prepare_threshold"] = None
    args.update(settings.engine_options.get("connect_args") or {})
    options = merge_options(str(user.get("options") or ""), timeouts)
    if options:
        args["options"] = options
    return args


def connect_kwargs(settings: Settings) -> dict[str, Any]:
    """Every keyword argument for ``psycopg.connect()`` that uow's own engine would use.

    For side connections made without an engine (a console probe, one host of several):
    the URL's parameters (hosts, TLS, ``target_session_attrs``...) and uow's defaults,
    merged as for the application's connections.
    """
    # The URL is read once: its parameters, then uow's defaults over what they leave unset.
    user = _user(settings)
    return {**user, **_uow_args(settings, user, startup_timeouts(settings))}


def hosts(params: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(host, port) pairs libpq tries, in order; "" where libpq uses its default."""
    names = str(params.get("host") or "").split(",")
    ports = str(params.get("port") or "").split(",")
    if len(ports) == 1:
        ports *= len(names)
    return list(zip(names, ports, strict=False))


def check_host(host: str) -> None:
    """Refuse a host libpq could not use: not an IP address, socket path or DNS name."""
    if not host or host.startswith("/"):
        return  # libpq's default, or a unix socket directory
    if "@" in host:
        # What follows an unencoded "@" in the password: never echo it.
        raise ConfigurationError(
            "url has an '@' after the password's '@': percent-encode special characters in "
            "the password (@ as %40, # as %23, / as %2F, : as %3A)"
        )
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    try:
        ascii_host = host.encode("idna").decode("ascii")
    except UnicodeError:
        ascii_host = ""
    labels = ascii_host.rstrip(".").split(".")
    if not ascii_host or len(ascii_host) > 253 or not all(_LABEL.match(x) for x in labels):
        raise ConfigurationError(
            f"url has host {host!r}, which is neither an IP address, a socket directory "
            "(starting with /) nor a valid host name (IDNA); correct the host in the URL"
        )


def _seconds(parameter: str, value: str) -> float:
    match = _DURATION.match(value)
    if not match:
        raise ConfigurationError(
            f"the URL's options set {parameter}={value!r}, which is not a duration; write "
            f"it as -c {parameter}=5s (units us, ms, s, min, h, d; a bare number is ms)"
        )
    return float(match[1]) * _TIME_UNITS[match[2] or "ms"]


def _split_options(options: str) -> list[str]:
    """Split ``options`` as the server does: on whitespace, ``\\`` escaping a character."""
    words: list[str] = []
    word: list[str] = []
    in_word = escaped = False
    for char in options:
        if escaped:
            word.append(char)
            escaped = False
        elif char == "\\":
            escaped = in_word = True
        elif char.isspace():
            if in_word:
                words.append("".join(word))
                word, in_word = [], False
        else:
            word.append(char)
            in_word = True
    if in_word:
        words.append("".join(word))
    return words


def adopt_url_values(settings: Settings) -> None:
    """Take the values the URL sets for uow's settings (see the precedence above)."""
    found = url_values(user_parameters(make_url(settings.url), settings.engine_options))
    given: dict[str, Any] = {}
    for name, value in found.items():
        current = getattr(settings, name)
        if current != value:
            _check_not_given(settings, name, current, value, "url")
            given[name] = current
            object.__setattr__(settings, name, value)
    object.__setattr__(settings, "_from_url", given)
    # Each replica's own URL values are checked now, against the values given.
    for i, replica in enumerate(settings.replica_urls):
        found = url_values(user_parameters(make_url(replica), settings.engine_options))
        for name, value in found.items():
            current = given.get(name, getattr(settings, name))
            if current != value:
                _check_not_given(settings, name, current, value, f"replica_urls[{i}]")


def _check_not_given(
    settings: Settings, name: str, current: object, value: object, where: str
) -> None:
    # A setting still at its default was not given: it yields to the URL.
    field_ = next(f for f in dataclasses.fields(settings) if f.name == name)
    factory = field_.default_factory
    default = field_.default if factory is dataclasses.MISSING else factory()
    if current != default:
        raise ConfigurationError(
            f"{name} is set twice: {current!r} by the {name} setting "
            f"({spec_of(field_).env}) and {value!r} by {where}'s parameters; "
            "remove one of them"
        )


def taken_from_url(settings: Settings) -> dict[str, Any]:
    """The settings ``settings`` took from its URL, with the values they were given as."""
    found: dict[str, Any] = getattr(settings, "_from_url", {})
    return found
