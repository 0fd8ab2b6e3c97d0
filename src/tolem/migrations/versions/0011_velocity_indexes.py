"""Velocity limits: a client address's and a card's payments of a window at a merchant

The card's index (merchant, fingerprint, created_at) replaces the fingerprint's own
index, which no query used: one index more on transactions, not two.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30 07:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_transactions_merchant_ip",
        "transactions",
        ["merchant_id", "ip", "created_at"],
        unique=False,
    )
    op.create_index(
        "ix_transactions_merchant_card",
        "transactions",
        ["merchant_id", "card_fingerprint", "created_at"],
        unique=False,
    )
    op.drop_index("ix_transactions_card_fingerprint", table_name="transactions")


def downgrade() -> None:
    op.create_index(
        "ix_transactions_card_fingerprint", "transactions", ["card_fingerprint"], unique=False
    )
    op.drop_index("ix_transactions_merchant_card", table_name="transactions")
    op.drop_index("ix_transactions_merchant_ip", table_name="transactions")
