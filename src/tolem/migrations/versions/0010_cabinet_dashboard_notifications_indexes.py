"""Cabinet: indexes for the dashboard's refunds of a day and the notifications page

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30 01:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_operations_kind_finished", "operations", ["kind", "finished_at"], unique=False
    )
    op.create_index(
        "ix_notifications_merchant_state",
        "notifications",
        ["merchant_id", "state", "created_at", "id"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_notifications_merchant_state", table_name="notifications")
    op.drop_index("ix_operations_kind_finished", table_name="operations")
