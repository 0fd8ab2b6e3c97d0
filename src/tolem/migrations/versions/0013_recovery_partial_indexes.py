"""Partial indexes for the recovery sweep: payments NEW, operations and cards pending

The sweep runs every few seconds in every worker. Without these it read every payment
whose three_ds_md is NULL (nearly all of them), and every operation and saved card; the
partial indexes hold only the unfinished rows, a handful.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-30 07:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_PARTIAL = (
    ("ix_transactions_new", "transactions", "created_at", "status = 'NEW'"),
    ("ix_operations_pending", "operations", "created_at", "state = 'pending'"),
    ("ix_saved_cards_pending", "saved_cards", "transaction_id", "state = 'pending'"),
)


def upgrade() -> None:
    for name, table, column, where in _PARTIAL:
        op.create_index(
            name,
            table,
            [column],
            unique=False,
            sqlite_where=sa.text(where),
            postgresql_where=sa.text(where),
        )


def downgrade() -> None:
    for name, table, _column, _where in reversed(_PARTIAL):
        op.drop_index(name, table_name=table)
