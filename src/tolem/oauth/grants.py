"""The cabinet API's grants on /oauth2/token: ``password`` and ``refresh_token``.

``grant_type=password`` takes a cabinet user's email and password (``username``,
``password``) with the merchant's ``client_id``/``client_secret``; the user must be a
user of that merchant. The password is checked by tolem.cabinet.users.log_in, so a
wrong one counts toward the cabinet's lockout exactly like a wrong one on the login
page, and a locked account is refused. The answer is an access token that names the
user (tolem.oauth.tokens, ``user_id``) and a refresh token.

A refresh token is a random 32-byte value; the table ``cabinet_sessions`` keeps only
its SHA-256, in a row of ``kind="refresh"``. It is rotated on every use: the row turns
``kind="spent"`` and a new row (a new token) takes its place. All the tokens that come
from one password login form a *family* (the rows' ``family`` column) and share that
login's absolute end,
REFRESH_LIFETIME after it. A spent token presented again means a copy is in someone
else's hands: the whole family ends, and the user signs in again with the password.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, update
from sqlalchemy.orm import Session

from tolem import fields
from tolem.cabinet.models import CabinetSession, CabinetUser
from tolem.cabinet.passwords import verify_password
from tolem.cabinet.users import LoginResult, find_user, log_in
from tolem.db.base import utcnow
from tolem.merchants import service as merchants
from tolem.oauth.service import TokenError, first_field
from tolem.oauth.tokens import AccessToken, TokenSealer

PASSWORD, REFRESH = "password", "refresh_token"
GRANTS = (PASSWORD, REFRESH)

#: What a user token may do when the request names no scope: all of the cabinet's.
USER_SCOPE = "webapi usermanagement email_send verification statement statistics payment"
#: A user's access token lives this long (the live password grant answers "900"), or
#: TOLEM_TOKEN_TTL if that is shorter: a stateless token cannot be revoked, so short.
USER_TOKEN_TTL = 900
#: A password login's refresh tokens work this long after it, like a web session.
REFRESH_LIFETIME = timedelta(hours=8)

KIND_REFRESH = "refresh"
KIND_SPENT = "spent"
_TOKEN_BYTES = 32
_MAX_TOKEN = 100  # token_urlsafe(32) is 43 characters
_MAX_USERNAME = 254  # the longest email address (tolem.cabinet.users.normalize_email)


@dataclass(frozen=True)
class UserToken:
    access_token: str
    expires_in: int
    refresh_token: str
    scope: str


def _refused(description: str) -> TokenError:
    return TokenError("invalid_grant", description, status=401)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("ascii", "replace")).hexdigest()


def _client(session: Session, form: Mapping[str, str]) -> str:
    """The merchant id of the form's client credentials, or 401."""
    client_id = (first_field(form, "client_id") or "").strip()
    client_secret = first_field(form, "client_secret") or ""
    if not client_id or not client_secret:
        raise TokenError("invalid_request", "client_id and client_secret are required")
    merchant = merchants.authenticate(session, client_id, client_secret)
    if merchant is None:
        raise TokenError("invalid_client", "invalid client credentials", status=401)
    return merchant.id


def _scope(form: Mapping[str, str]) -> str:
    try:
        scope = fields.free_text(first_field(form, "scope"), "scope", max_length=500).strip()
    except fields.FieldError as exc:
        raise TokenError("invalid_request", str(exc)) from exc
    return " ".join(scope.split()) or USER_SCOPE


def _access(sealer: TokenSealer, user: CabinetUser, scope: str, ttl: int) -> tuple[str, int]:
    lifetime = min(USER_TOKEN_TTL, ttl)
    token = AccessToken(
        merchant_id=user.merchant_id,
        terminal_id="",
        scope=scope,
        invoice_id="",
        amount=None,
        currency="",
        post_link="",
        failure_post_link="",
        secret_hash="",
        expires_at=int(time.time()) + lifetime,
        user_id=user.id,
    )
    return sealer.seal(token), lifetime


def _new_refresh(
    session: Session, user: CabinetUser, family: str, expires_at: datetime, now: datetime
) -> str:
    token = secrets.token_urlsafe(_TOKEN_BYTES)
    session.add(
        CabinetSession(
            id=_digest(token),
            user_id=user.id,
            kind=KIND_REFRESH,
            csrf_token="",
            family=family,
            created_at=now,
            last_seen_at=now,
            expires_at=expires_at,
        )
    )
    session.flush()
    return token


def _locked(until: datetime | None) -> TokenError:
    return _refused(
        "the account is locked after too many wrong passwords, until "
        + (until.isoformat(timespec="seconds") if until else "later")
    )


def password_grant(
    session: Session, sealer: TokenSealer, form: Mapping[str, str], *, ttl: int
) -> UserToken | TokenError:
    """A user token and a refresh token, or the error to answer. The error is returned,
    not raised, so that the caller commits what a wrong password counted."""
    merchant_id = _client(session, form)
    username = (first_field(form, "username") or "").strip()
    password = first_field(form, "password") or ""
    if not username or not password:
        raise TokenError("invalid_request", "username and password are required")
    if len(username) > _MAX_USERNAME:
        raise TokenError("invalid_request", f"username: at most {_MAX_USERNAME} characters")
    scope = _scope(form)
    now = utcnow()
    wrong = _refused("invalid username or password")
    found = find_user(session, username)
    if found is None or found.merchant_id != merchant_id:
        # No such user, or another merchant's: the same answer and the same work (one
        # scrypt) as a wrong password, so neither the answer nor its time tells whether
        # the address has an account; and no count toward another merchant's user's
        # lockout: these client credentials give no say over that merchant's accounts.
        verify_password(None, password)
        return wrong
    outcome = log_in(session, username, password, now)
    if outcome.result is LoginResult.LOCKED:
        return _locked(outcome.locked_until)
    if outcome.result is not LoginResult.OK or outcome.user is None:
        return wrong
    user = outcome.user
    # The user's ended refresh families go now: the table holds no dead rows for long.
    session.execute(
        delete(CabinetSession)
        .where(CabinetSession.user_id == user.id)
        .where(CabinetSession.kind.in_((KIND_REFRESH, KIND_SPENT)))
        .where(CabinetSession.expires_at <= now)
        .execution_options(synchronize_session=False)
    )
    refresh = _new_refresh(session, user, secrets.token_hex(16), now + REFRESH_LIFETIME, now)
    access, lifetime = _access(sealer, user, scope, ttl)
    return UserToken(access, lifetime, refresh, scope)


def _end_family(session: Session, row: CabinetSession) -> None:
    session.execute(
        delete(CabinetSession)
        .where(CabinetSession.user_id == row.user_id)
        .where(CabinetSession.kind.in_((KIND_REFRESH, KIND_SPENT)))
        .where(CabinetSession.family == row.family)
        .execution_options(synchronize_session=False)
    )


def refresh_grant(
    session: Session, sealer: TokenSealer, form: Mapping[str, str], *, ttl: int
) -> UserToken | TokenError:
    """A new access token and a new refresh token for a live refresh token, or the error
    to answer (returned, so that the caller commits an ended family)."""
    merchant_id = _client(session, form)
    presented = (first_field(form, "refresh_token") or "").strip()
    if not presented:
        raise TokenError("invalid_request", "refresh_token is required")
    scope = _scope(form)
    now = utcnow()
    invalid = _refused("invalid refresh token")
    if len(presented) > _MAX_TOKEN:
        return invalid
    row = session.get(CabinetSession, _digest(presented))
    if row is None or row.kind not in (KIND_REFRESH, KIND_SPENT):
        return invalid
    user = session.get(CabinetUser, row.user_id)
    if user is None or user.merchant_id != merchant_id:
        return invalid  # another merchant's client learns nothing, and ends nothing
    if row.expires_at <= now:
        _end_family(session, row)
        return _refused("refresh token expired; sign in again with the password")
    if row.kind == KIND_SPENT:
        _end_family(session, row)
        return _refused(
            "refresh token already used; every refresh token of that sign-in is now "
            "revoked: sign in again with the password"
        )
    if user.locked_until is not None and user.locked_until > now:
        return _locked(user.locked_until)
    # Spend it, unless a concurrent request already did: then this is a reuse too.
    spent = session.execute(
        update(CabinetSession)
        .where(CabinetSession.id == row.id, CabinetSession.kind == KIND_REFRESH)
        .values(kind=KIND_SPENT, last_seen_at=now)
        .execution_options(synchronize_session=False)
    )
    if getattr(spent, "rowcount", 0) != 1:
        _end_family(session, row)
        return _refused(
            "refresh token already used; every refresh token of that sign-in is now "
            "revoked: sign in again with the password"
        )
    refresh = _new_refresh(session, user, row.family, row.expires_at, now)
    access, lifetime = _access(sealer, user, scope, ttl)
    return UserToken(access, lifetime, refresh, scope)
