"""Cabinet: terminal host lists, who ran an operation, API refresh sessions, and the
index behind the merchant's transaction pages

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 00:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "terminals", sa.Column("allowed_hosts", sa.Text(), server_default="", nullable=False)
    )
    op.add_column(
        "operations",
        sa.Column("performed_by", sa.String(length=300), server_default="api", nullable=False),
    )
    op.add_column(
        "cabinet_sessions",
        sa.Column("kind", sa.String(length=8), server_default="web", nullable=False),
    )
    op.add_column(
        "cabinet_sessions",
        sa.Column("family", sa.String(length=64), server_default="", nullable=False),
    )
    op.create_index(
        op.f("ix_cabinet_sessions_family"), "cabinet_sessions", ["family"], unique=False
    )
    op.create_index(
        "ix_transactions_merchant_created",
        "transactions",
        ["merchant_id", "created_at", "id"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_transactions_merchant_created", table_name="transactions")
    op.drop_index(op.f("ix_cabinet_sessions_family"), table_name="cabinet_sessions")
    with op.batch_alter_table("cabinet_sessions") as batch:
        batch.drop_column("family")
        batch.drop_column("kind")
    with op.batch_alter_table("operations") as batch:
        batch.drop_column("performed_by")
    with op.batch_alter_table("terminals") as batch:
        batch.drop_column("allowed_hosts")
