"""What the operator tools (``uow doctor``, ``uow top``, ``uow migrate``) print.

The server's text (other sessions' queries, application names, error messages) goes
through :func:`printable`, so that a query comment holding terminal escape sequences
cannot rewrite the operator's terminal; a failure is explained by :func:`describe_failure`
with libpq's reason and without any password.
"""

from __future__ import annotations

import psycopg

from .._engine.classify import first_line, hide_secrets
from .._errors import UnitOfWorkError
from .._settings import Settings

__all__ = ["describe_failure", "printable"]


def printable(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` with every character a terminal would act on written as an escape.

    C0 and C1 control characters, DEL (so ESC, and with it every escape sequence), and
    the other characters Python does not call printable (bidirectional overrides,
    line separators) become ``\\x1b``-style escapes; printable Unicode text is kept.
    Idempotent: escaping escaped text changes nothing.
    """
    if text.isprintable():
        return text
    return "".join(
        char
        if char.isprintable() or (keep_newlines and char == "\n")
        else char.encode("unicode_escape").decode("ascii")
        for char in text
    )


def describe_failure(exc: BaseException, settings: Settings) -> str:
    """Why a command failed, in one line for the terminal: the reason, then the kind.

    The reason is the server's or libpq's own message (wrong password, certificate
    verify failed, permission denied, connection refused...) when the driver raised one,
    its lines joined, with the passwords of ``settings`` hidden.
    """
    driver: BaseException | None = exc
    while driver is not None and not isinstance(driver, psycopg.Error):
        driver = driver.__cause__ or driver.__context__
    kind = type(exc).__name__
    if driver is None:
        # uow's own messages show only masked URLs; SQLAlchemy's may quote parameters.
        reason = first_line(exc) if isinstance(exc, UnitOfWorkError) else ""
    else:
        lines: list[str] = []
        for line in str(driver).removeprefix("connection failed: ").splitlines():
            # libpq repeats a failure per attempt (with and without TLS, per address).
            if (text := " ".join(line.split())) and text not in lines:
                lines.append(text)
        reason = " ".join(lines)
    return printable(f"{hide_secrets(reason, settings)} ({kind})" if reason else kind)
