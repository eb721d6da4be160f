"""How a unit of work's session ends: committed (COMMIT lost in flight is told apart), closed."""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session

from ._engine.classify import ended_before_commit, first_line
from ._engine.monitor import stop_watching
from ._errors import CommitOutcomeUnknown, ConnectionLost

__all__ = ["close_session", "commit_session"]

logger = logging.getLogger("uow")


def close_session(session: Session) -> None:
    """Close a unit's session, which returns its connection; failures are logged, not raised."""
    try:
        session.close()
    except ConnectionLost as exc:
        # Only the ROLLBACK ending the transaction failed: the server has already
        # rolled it back, and the pool discarded the connection. Not an error.
        stop_watching(session)
        logger.warning(
            "the connection was lost as the unit of work ended (%s); it was discarded",
            first_line(exc.__cause__ or exc),
        )
    except BaseException as exc:
        # The monitor hears a transaction end only when it ends cleanly (see
        # stop_watching); after a clean close there is nothing left to stop.
        stop_watching(session)
        if not isinstance(exc, Exception):
            raise
        logger.exception("closing the session failed; its connection was invalidated")


def commit_session(session: Session) -> None:
    """Flush, then commit; a connection lost during COMMIT raises CommitOutcomeUnknown.

    Unless the server had ended the session before it read the COMMIT (25P03): then
    it rolled the transaction back, and the ConnectionLost stands (retried).
    """
    # Flush first, so that a connection lost now is known to be lost before COMMIT
    # was sent (nothing kept, safe to retry); lost during commit() it may have landed.
    session.flush()
    try:
        session.commit()
    except ConnectionLost as exc:
        if ended_before_commit(exc):
            raise
        raise CommitOutcomeUnknown(
            "the connection was lost while COMMIT was in flight, so the transaction may or may "
            "not have committed. It is not retried automatically: check whether its effects "
            "are there (for example by an idempotency key) before running it again."
        ) from exc
