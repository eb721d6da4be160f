"""Create procrastinate's schema (version 3.10.0): the jobs the bank defers, and their workers.

Revision ID: 8d9434178edf
Revises: 9df246da5ce1
Create Date: 2026-12-04 22:56:00

The SQL is ``procrastinate_3.10.0_schema.sql`` beside this file, a copy of that release's
``procrastinate/sql/schema.sql``: fixed, so that a database migrated today and one
migrated after a procrastinate upgrade end up alike. To follow a procrastinate upgrade,
add a migration that runs, in order, the files of ``procrastinate/sql/migrations/`` newer
than ``03.04.00_50`` (each is named by the version that introduced it; ``pre`` files go
before the new workers are deployed, ``post`` files once no old worker runs), as
procrastinate's own migration guide says, and note the new version in its docstring.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "8d9434178edf"
down_revision: str | Sequence[str] | None = "9df246da5ce1"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PROCRASTINATE_VERSION = "3.10.0"
SCHEMA = Path(__file__).with_name(f"procrastinate_{PROCRASTINATE_VERSION}_schema.sql")

TABLES = (
    "procrastinate_events",
    "procrastinate_periodic_defers",
    "procrastinate_jobs",
    "procrastinate_workers",
)
# Some functions return the jobs table's row type: they go before the tables.
FUNCTIONS = (
    "procrastinate_defer_jobs_v1",
    "procrastinate_defer_periodic_job_v2",
    "procrastinate_fetch_job_v2",
    "procrastinate_finish_job_v1",
    "procrastinate_cancel_job_v1",
    "procrastinate_retry_job_v1",
    "procrastinate_retry_job_v2",
    "procrastinate_register_worker_v1",
    "procrastinate_unregister_worker_v1",
    "procrastinate_update_heartbeat_v1",
    "procrastinate_prune_stalled_workers_v1",
)
# The tables' triggers call these: they go after the tables (and their triggers).
TRIGGER_FUNCTIONS = (
    "procrastinate_notify_queue_job_inserted_v1",
    "procrastinate_notify_queue_abort_job_v1",
    "procrastinate_trigger_function_status_events_insert_v1",
    "procrastinate_trigger_function_status_events_update_v1",
    "procrastinate_trigger_function_scheduled_events_v1",
    "procrastinate_trigger_abort_requested_events_procedure_v1",
    "procrastinate_unlink_periodic_defers_v1",
)
TYPES = (
    "procrastinate_job_to_defer_v1",
    "procrastinate_job_event_type",
    "procrastinate_job_status",
)


def upgrade() -> None:
    """Apply procrastinate's schema: its tables, types, functions and triggers."""
    # text(): SQLAlchemy doubles the % of the functions' RAISE formats for psycopg; the
    # file has no :name that it would take for a bind parameter.
    op.execute(sa.text(SCHEMA.read_text(encoding="utf-8")))


def downgrade() -> None:
    """Drop every object upgrade() created (triggers and indexes go with their tables)."""
    # No CASCADE: an object of the application's that depends on these stops the downgrade.
    op.execute(f"DROP FUNCTION {', '.join(FUNCTIONS)}")
    op.execute(f"DROP TABLE {', '.join(TABLES)}")
    op.execute(f"DROP FUNCTION {', '.join(TRIGGER_FUNCTIONS)}")
    op.execute(f"DROP TYPE {', '.join(TYPES)}")
