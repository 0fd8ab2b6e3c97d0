"""Drop transactions' index on merchant_id alone

Every query that filters on the merchant alone is served by the indexes that begin with
merchant_id (merchant_created first); the single-column one only cost each payment's
insert a B-tree more.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-30 07:10:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_transactions_merchant_id", table_name="transactions")


def downgrade() -> None:
    op.create_index("ix_transactions_merchant_id", "transactions", ["merchant_id"], unique=False)
