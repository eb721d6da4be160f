"""What ``uow doctor`` reports: findings, the report, the exit codes.

Shared by the doctor, the PgBouncer probe, the replication checks and ``uow top``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .activity import ServerSession

__all__ = [
    "EXIT_ACTION",
    "EXIT_OK",
    "EXIT_PERMISSION",
    "EXIT_UNREACHABLE",
    "Finding",
    "Report",
]

EXIT_OK = 0
EXIT_ACTION = 1
EXIT_UNREACHABLE = 2
EXIT_PERMISSION = 3  # uow migrate: the role lacks a privilege the migrations need


@dataclass(frozen=True)
class Finding:
    """Something worth a look; ``action`` is true when it makes the exit code 1."""

    code: str
    message: str
    advice: str
    action: bool


@dataclass
class Report:
    """Everything ``uow doctor`` found; ``as_dict()`` is the JSON form, with stable keys."""

    url: str
    application_name: str
    server: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    connections: list[dict[str, Any]] = field(default_factory=list)
    processes: dict[str, dict[str, int]] = field(default_factory=dict)
    """This application's processes by kind (web worker, job worker): how many, and
    their connections."""
    idle_in_transaction: list[ServerSession] = field(default_factory=list)
    longest_transactions: list[ServerSession] = field(default_factory=list)
    longest_queries: list[ServerSession] = field(default_factory=list)
    budget: dict[str, Any] = field(default_factory=dict)
    pgbouncer: dict[str, Any] = field(default_factory=dict)
    replication: list[dict[str, Any]] = field(default_factory=list)
    replicas: list[dict[str, Any]] = field(default_factory=list)
    hosts: list[dict[str, Any]] = field(default_factory=list)
    """Each host of the URL, in the order libpq tries them, and what it is."""
    warnings: list[Finding] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """1 if any warning needs action, else 0."""
        return EXIT_ACTION if any(w.action for w in self.warnings) else EXIT_OK

    def as_dict(self) -> dict[str, Any]:
        """The report as plain data for JSON."""
        data = asdict(self)
        data["exit_code"] = self.exit_code
        return data
