"""Cabinet: the indexes behind the transaction list's filters

Each serves one filter of GET /cabinet/transactions as (merchant, value, created_at, id),
so that a filtered page is read newest first straight from the index: status, payer
account, amount, the card's first six and last four digits (expressions on the mask
"440563...5096"), and the invoice. See docs/cabinet.md, "Transactions: filters and
speed".

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30 01:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEXES: dict[str, list[str | sa.TextClause]] = {
    "ix_transactions_merchant_status": ["merchant_id", "status", "created_at", "id"],
    "ix_transactions_merchant_account": ["merchant_id", "account_id", "created_at", "id"],
    "ix_transactions_merchant_amount": ["merchant_id", "amount", "created_at", "id"],
    "ix_transactions_merchant_card_first6": [
        "merchant_id",
        sa.text("substr(card_mask, 1, 6)"),
        "created_at",
        "id",
    ],
    "ix_transactions_merchant_card_last4": [
        "merchant_id",
        sa.text("substr(card_mask, 10)"),
        "created_at",
        "id",
    ],
    "ix_transactions_merchant_invoice": ["merchant_id", "invoice_id"],
}


def upgrade() -> None:
    for name, columns in INDEXES.items():
        op.create_index(name, "transactions", columns, unique=False)


def downgrade() -> None:
    for name in reversed(INDEXES):
        op.drop_index(name, table_name="transactions")
