"""Cabinet login sessions, kept on the server.

The browser's cookie carries a random 32-byte token; the table keeps only its SHA-256,
so a copy of the database opens no session. A session ends at logout, SESSION_LIFETIME
after the login, or IDLE_TIMEOUT after the last request, whichever comes first; an
ended session found by its cookie is deleted on the spot.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, update
from sqlalchemy.orm import Session

from tolem.cabinet.models import CabinetSession, CabinetUser
from tolem.db.base import utcnow

__all__ = [
    "IDLE_TIMEOUT",
    "SESSION_LIFETIME",
    "Found",
    "end_session",
    "look_up",
    "settle",
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
    # Ended sessions go now, everyone's past their end and the user's own idle ones:
    # the table holds no dead rows for long.
    session.execute(
        delete(CabinetSession)
        .where(CabinetSession.expires_at <= now)
        .execution_options(synchronize_session=False)
    )
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


@dataclass(frozen=True)
class Found:
    """What a cookie's token names: the row and its user, and whether the session has
    ended (then it is to be deleted) or is due a ``last_seen_at`` update."""

    row: CabinetSession
    user: CabinetUser | None
    ended: bool
    stale: bool


def look_up(session: Session, token: str | None, now: datetime) -> Found | None:
    """The web session the token names, read only: no write, so a page view on SQLite
    takes no write lock unless the session ended or is due a touch."""
    if not token or len(token) > _MAX_COOKIE:
        return None
    row = session.get(CabinetSession, session_id(token))
    if row is None or row.kind != "web":  # a cabinet API refresh token opens no page
        return None
    ended = row.expires_at <= now or row.last_seen_at + IDLE_TIMEOUT <= now
    user = None if ended else session.get(CabinetUser, row.user_id)
    return Found(row, user, ended, now - row.last_seen_at >= _TOUCH_EVERY)


def settle(session: Session, found: Found, now: datetime) -> None:
    """The write a look-up asked for: delete an ended session, or record the visit
    (conditionally, so two requests at once write it once)."""
    if found.ended:
        session.execute(
            delete(CabinetSession)
            .where(CabinetSession.id == found.row.id)
            .execution_options(synchronize_session=False)
        )
    elif found.stale:
        session.execute(
            update(CabinetSession)
            .where(
                CabinetSession.id == found.row.id,
                CabinetSession.last_seen_at == found.row.last_seen_at,
            )
            .values(last_seen_at=now)
            .execution_options(synchronize_session=False)
        )


def end_session(session: Session, token: str | None) -> bool:
    if not token or len(token) > _MAX_COOKIE:
        return False
    result = session.execute(
        delete(CabinetSession)
        .where(CabinetSession.id == session_id(token))
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0))
