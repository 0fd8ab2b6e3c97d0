"""Cabinet login sessions, kept on the server.

The browser's cookie carries a random 32-byte token; the table keeps only its SHA-256,
so a copy of the database opens no session. A session ends at logout, SESSION_LIFETIME
after the login, or IDLE_TIMEOUT after the last request, whichever comes first; an
ended session found by its cookie is deleted on the spot.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

from sqlalchemy import delete
from sqlalchemy.orm import Session

from tolem.cabinet.models import CabinetSession, CabinetUser
from tolem.db.base import utcnow

__all__ = [
    "IDLE_TIMEOUT",
    "SESSION_LIFETIME",
    "end_session",
    "find_session",
    "start_session",
]

SESSION_LIFETIME = timedelta(hours=8)
IDLE_TIMEOUT = timedelta(minutes=30)
#: last_seen_at is written at most this often, not at every page view.
_TOUCH_EVERY = timedelta(seconds=30)
_TOKEN_BYTES = 32
_MAX_COOKIE = 100  # token_urlsafe(32) is 43 characters


def session_id(token: str) -> str:
    return hashlib.sha256(token.encode("ascii", "replace")).hexdigest()


def start_session(
    session: Session, user: CabinetUser, now: datetime | None = None
) -> tuple[str, CabinetSession]:
    """A new session of ``user``: the cookie's token (shown only now) and the row."""
    now = now or utcnow()
    # The user's own ended sessions go now: the table holds no dead rows for long.
    session.execute(
        delete(CabinetSession)
        .where(CabinetSession.user_id == user.id)
        .where(
            (CabinetSession.expires_at <= now)
            | (
                (CabinetSession.kind == "web")  # refresh tokens have no idle timeout
                & (CabinetSession.last_seen_at <= now - IDLE_TIMEOUT)
            )
        )
        .execution_options(synchronize_session=False)
    )
    token = secrets.token_urlsafe(_TOKEN_BYTES)
    row = CabinetSession(
        id=session_id(token),
        user_id=user.id,
        csrf_token=secrets.token_urlsafe(_TOKEN_BYTES),
        created_at=now,
        last_seen_at=now,
        expires_at=now + SESSION_LIFETIME,
    )
    session.add(row)
    session.flush()
    return token, row


def find_session(
    session: Session, token: str | None, now: datetime | None = None
) -> tuple[CabinetSession, CabinetUser] | None:
    """The live session the cookie names, and its user; ended sessions are deleted."""
    if not token or len(token) > _MAX_COOKIE:
        return None
    now = now or utcnow()
    row = session.get(CabinetSession, session_id(token))
    if row is None or row.kind != "web":  # a cabinet API refresh token opens no page
        return None
    if row.expires_at <= now or row.last_seen_at + IDLE_TIMEOUT <= now:
        session.delete(row)
        return None
    user = session.get(CabinetUser, row.user_id)
    if user is None:
        return None
    if now - row.last_seen_at >= _TOUCH_EVERY:
        row.last_seen_at = now
    return row, user


def end_session(session: Session, token: str | None) -> bool:
    if not token or len(token) > _MAX_COOKIE:
        return False
    result = session.execute(
        delete(CabinetSession)
        .where(CabinetSession.id == session_id(token))
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0))
