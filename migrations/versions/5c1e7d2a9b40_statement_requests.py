"""Create statement_requests: monthly statements asked for, rendered by a job.

Revision ID: 5c1e7d2a9b40
Revises: 8d9434178edf
Create Date: 2026-12-04 23:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "5c1e7d2a9b40"
down_revision: str | Sequence[str] | None = "8d9434178edf"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the table and its partial unique index (one pending request per account and month)."""
    op.create_table(
        "statement_requests",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("account_id", sa.BigInteger(), nullable=False),
        sa.Column("month", sa.Date(), nullable=False),
        sa.Column("status", sa.String(length=10), server_default="pending", nullable=False),
        sa.Column("job_id", sa.BigInteger(), nullable=True),
        sa.Column("path", sa.Text(), nullable=True),
        sa.Column("movements", sa.Integer(), nullable=True),
        sa.Column("complete", sa.Boolean(), server_default="false", nullable=False),
        sa.Column(
            "requested_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("done_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'done', 'failed')",
            name=op.f("ck_statement_requests_status_known"),
        ),
        sa.CheckConstraint(
            "extract(day FROM month) = 1", name=op.f("ck_statement_requests_month_first_day")
        ),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_statement_requests_account_id_accounts")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_statement_requests")),
    )
    op.create_index(
        "uq_statement_requests_pending",
        "statement_requests",
        ["account_id", "month"],
        unique=True,
        postgresql_where=sa.text("status = 'pending'"),
    )


def downgrade() -> None:
    """Drop the table (its index and constraints go with it)."""
    op.drop_table("statement_requests")
