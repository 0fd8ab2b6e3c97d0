"""Merchants and their terminals."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from tolem.db.base import Base, UTCDateTime, new_id, utcnow


class Merchant(Base):
    __tablename__ = "merchants"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    client_id: Mapped[str] = mapped_column(String(100), unique=True)
    # HMAC-SHA256 of the ClientSecret keyed by a per-merchant random salt; see
    # tolem.merchants.credentials for why this is not a slow password hash.
    secret_salt: Mapped[str] = mapped_column(String(64))
    secret_digest: Mapped[str] = mapped_column(String(64))
    # Signed postLinks: the Standard Webhooks secret, sealed (tolem.notifications.signing);
    # empty when postLinks go unsigned, as ePay sends them.
    signing_secret: Mapped[str] = mapped_column(Text, default="", server_default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Terminal(Base):
    __tablename__ = "terminals"

    # The TerminalID shops send: a UUID.
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchants.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    # Two-step terminals stop at AUTH and wait for charge or cancel; one-step ones
    # authorize and charge together (status CHARGE).
    two_step: Mapped[bool] = mapped_column(Boolean, default=True)
    # Space-separated ISO 4217 letter codes this terminal takes.
    currencies: Mapped[str] = mapped_column(String(100), default="KZT USD")
    # When to ask for 3-D Secure: "always", "never", or "card" (as the issuer says).
    secure3d: Mapped[str] = mapped_column(String(8), default="card", server_default="card")
    # Simulator cards and triggers work on test terminals (all of them in sandbox mode).
    is_test: Mapped[bool] = mapped_column(Boolean, default=True)
    # Space-separated host names that postLink, failurePostLink, backLink and
    # failureBackLink may point to in production mode; empty: any host.
    allowed_hosts: Mapped[str] = mapped_column(Text, default="", server_default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    def accepts(self, currency: str) -> bool:
        return currency in self.currencies.split()
