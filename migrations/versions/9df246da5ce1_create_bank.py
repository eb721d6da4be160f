"""Create the bank's tables: accounts and the ledger of movements between them.

Revision ID: 9df246da5ce1
Revises:
Create Date: 2026-11-24 23:15:27.147230
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "9df246da5ce1"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create accounts and ledger, named by the naming convention in examples/bank/models.py."""
    op.create_table(
        "accounts",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("owner", sa.String(length=200), nullable=False),
        sa.Column("balance", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("balance >= 0", name=op.f("ck_accounts_balance_not_negative")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_accounts")),
    )
    op.create_table(
        "ledger",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("idempotency_key", sa.String(length=100), nullable=False),
        sa.Column("source_id", sa.BigInteger(), nullable=True),
        sa.Column("target_id", sa.BigInteger(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("amount > 0", name=op.f("ck_ledger_amount_positive")),
        sa.CheckConstraint(
            "source_id IS DISTINCT FROM target_id", name=op.f("ck_ledger_distinct_accounts")
        ),
        sa.ForeignKeyConstraint(
            ["source_id"], ["accounts.id"], name=op.f("fk_ledger_source_id_accounts")
        ),
        sa.ForeignKeyConstraint(
            ["target_id"], ["accounts.id"], name=op.f("fk_ledger_target_id_accounts")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_ledger_idempotency_key")),
    )
    # PostgreSQL does not index foreign keys by itself: without these, listing an account's
    # movements, and the foreign-key check when an account is deleted, scan the whole ledger.
    op.create_index("ix_ledger_source_id", "ledger", ["source_id"], unique=False)
    op.create_index("ix_ledger_target_id", "ledger", ["target_id"], unique=False)


def downgrade() -> None:
    """Drop everything upgrade() created (the indexes and constraints go with their tables)."""
    op.drop_table("ledger")
    op.drop_table("accounts")
