"""Saved cards: what cardSave and card verification keep."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import ForeignKey, Index, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from tolem.db.base import Base, UTCDateTime, new_id, utcnow


class CardState(StrEnum):
    PENDING = "pending"  # its payment is not decided yet; deleted if it fails
    ACTIVE = "active"  # usable; its id is the cardID shops store
    DEACTIVATED = "deactivated"


class SavedCard(Base):
    """One saved card of one customer (``accountId``) of one merchant.

    Never the PAN in clear, never the CVC: the card number and expiry are sealed by
    :class:`tolem.cards.vault.CardVault` (``sealed``, under the key ``key_id``).
    """

    __tablename__ = "saved_cards"
    __table_args__ = (
        Index("ix_saved_cards_owner", "merchant_id", "account_id", "card_fingerprint"),
        # The recovery sweep's cards held by a payment (migration 0013).
        Index(
            "ix_saved_cards_pending",
            "transaction_id",
            sqlite_where=text("state = 'pending'"),
            postgresql_where=text("state = 'pending'"),
        ),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)  # cardID
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchants.id"))
    terminal_id: Mapped[str] = mapped_column(ForeignKey("terminals.id"))
    account_id: Mapped[str] = mapped_column(String(100), default="")
    # The payment that saved it: pending until that payment is decided.
    transaction_id: Mapped[str] = mapped_column(ForeignKey("transactions.id"), unique=True)
    state: Mapped[str] = mapped_column(String(16), default=CardState.PENDING.value)
    card_mask: Mapped[str] = mapped_column(String(32))
    card_fingerprint: Mapped[str] = mapped_column(String(64))
    card_type: Mapped[str] = mapped_column(String(16), default="")
    payer_name: Mapped[str] = mapped_column(String(200), default="")
    key_id: Mapped[str] = mapped_column(String(16))
    sealed: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
