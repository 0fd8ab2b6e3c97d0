"""Cabinet users and their login sessions."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from tolem.db.base import Base, UTCDateTime, new_id, utcnow


class CabinetUser(Base):
    """A person who logs in to a merchant's cabinet; every query is scoped to that
    merchant."""

    __tablename__ = "cabinet_users"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    merchant_id: Mapped[str] = mapped_column(ForeignKey("merchants.id"), index=True)
    # Lower-cased and trimmed, so one address is one account.
    email: Mapped[str] = mapped_column(String(254), unique=True)
    # tolem.cabinet.passwords: scrypt with its parameters; never the password.
    password_hash: Mapped[str] = mapped_column(String(200))
    # Wrong passwords in a row; at the limit the account locks until locked_until.
    failed_logins: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class CabinetSession(Base):
    """A logged-in browser. The cookie carries a random token; only its SHA-256 is kept
    here (the id), so a copy of this table opens no session."""

    __tablename__ = "cabinet_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("cabinet_users.id"), index=True)
    # "web" for a browser's cookie; "refresh" for a cabinet API refresh token
    # (grant_type=password on /oauth2/token), "spent" once used and replaced.
    kind: Mapped[str] = mapped_column(String(8), default="web", server_default="web")
    # Refresh rows: the password login they descend from (every rotation keeps it), so
    # a replayed refresh token can end the whole family at once; "" for web sessions.
    family: Mapped[str] = mapped_column(String(64), default="", server_default="", index=True)
    # Every POST of this session carries it (a hidden field).
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # created_at + the absolute lifetime; the idle timeout counts from last_seen_at.
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
