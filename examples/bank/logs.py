"""Logging for the bank's servers: one line per record with time, level, pid and logger.

``python -m examples.bank serve`` passes :func:`logging_config` to uvicorn
(``log_config=``), so uvicorn, uow and the app log the same way in every worker; the
pid tells workers apart. For the ``uvicorn`` or ``fastapi`` commands, write it to a
file first: ``python -m examples.bank.logs > logging.json`` and pass
``--log-config logging.json``.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["LOG_FORMAT", "logging_config"]

LOG_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"


def logging_config(level: str = "INFO") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` dict: stderr, :data:`LOG_FORMAT`, ``level`` for ours.

    uvicorn, uow and the app log at ``level``; every other library at WARNING.
    """
    ours = {"level": level.upper()}
    return {
        "version": 1,
        # uvicorn configures logging after importing the app: keep the loggers that exist.
        "disable_existing_loggers": False,
        "formatters": {"line": {"format": LOG_FORMAT}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "line",
                "stream": "ext://sys.stderr",
            }
        },
        # No handlers below the root: every record is written once, by the root's.
        "loggers": {
            "uvicorn": ours,
            "uvicorn.error": ours,
            "uvicorn.access": ours,
            "uow": ours,
            "examples": ours,
        },
        "root": {"handlers": ["stderr"], "level": "WARNING"},
    }


if __name__ == "__main__":
    print(json.dumps(logging_config(), indent=2))
