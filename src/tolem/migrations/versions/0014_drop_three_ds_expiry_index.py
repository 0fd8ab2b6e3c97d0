"""Drop transactions' index on three_ds_expires_at

The one query that reads it (tolem.secure3d.service.expire_stale) asks for payments
still NEW, which the partial index ix_transactions_new (migration 0013) holds, a
handful of rows. The full index cost each payment's insert a B-tree more, for a column
that is empty in every payment without 3-D Secure.

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-30 10:30:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_transactions_three_ds_expires_at", table_name="transactions")


def downgrade() -> None:
    op.create_index(
        "ix_transactions_three_ds_expires_at",
        "transactions",
        ["three_ds_expires_at"],
        unique=False,
    )
