"""Cabinet users: creation, login with lockout, and the sandbox user ePay documents."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import case, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tolem import sandbox
from tolem.cabinet.models import CabinetUser
from tolem.cabinet.passwords import hash_password, needs_rehash, verify_password
from tolem.db.base import utcnow
from tolem.merchants.service import SANDBOX_CLIENT_ID, find_by_client_id

#: ePay's published sandbox cabinet login (EPAY.md section 2).
SANDBOX_EMAIL = sandbox.CABINET_EMAIL
SANDBOX_PASSWORD = sandbox.CABINET_PASSWORD

#: Wrong passwords in a row that lock an account, and for how long.
MAX_FAILED_LOGINS = 3
LOCK_TIME = timedelta(minutes=15)


class UserError(ValueError):
    pass


class LoginResult(StrEnum):
    OK = "ok"
    WRONG = "wrong"  # unknown email or wrong password: one answer for both
    LOCKED = "locked"


@dataclass(frozen=True)
class Login:
    result: LoginResult
    user: CabinetUser | None = None
    locked_until: datetime | None = None


def normalize_email(email: str) -> str:
    email = email.strip().lower()
    local, _, domain = email.partition("@")
    if not local or not domain or " " in email or len(email) > 254:
        raise UserError("an email address looks like name@example.kz")
    return email


def create_user(session: Session, client_id: str, email: str, password: str) -> CabinetUser:
    """A cabinet user of the merchant with ``client_id``. Raises UserError."""
    merchant = find_by_client_id(session, client_id)
    if merchant is None:
        raise UserError(f"no merchant with ClientID {client_id!r}")
    user = CabinetUser(
        merchant_id=merchant.id,
        email=normalize_email(email),
        password_hash=hash_password(password),
    )
    try:
        with session.begin_nested():  # a duplicate undoes this insert, not the caller's work
            session.add(user)
    except IntegrityError:
        raise UserError(f"{user.email} already has an account") from None
    return user


def find_user(session: Session, email: str) -> CabinetUser | None:
    try:
        email = normalize_email(email)
    except UserError:
        return None
    return session.scalars(select(CabinetUser).where(CabinetUser.email == email)).first()


def log_in(session: Session, email: str, password: str, now: datetime | None = None) -> Login:
    """Check a password. Three wrong ones in a row lock the account for LOCK_TIME; while
    it is locked even the right password is refused.

    One login of an account is checked at a time, in every process: the check takes the
    account's row (PostgreSQL: ``FOR UPDATE SKIP LOCKED``; SQLite writes one transaction
    at a time already). An attempt that finds another one holding it is answered as a
    wrong password, after the same work, without being checked or counted. Otherwise
    a burst of guesses sent at once (through several servers) was checked in full
    before the lock, which then came too late: 20 wrong ones counted 20, and a right
    one among them logged in."""
    now = now or utcnow()
    user = find_user(session, email)
    if user is not None:
        user = session.scalars(
            select(CabinetUser)
            .where(CabinetUser.id == user.id)
            .with_for_update(skip_locked=True)
            .execution_options(populate_existing=True)  # as it is now, not as first read
        ).first()
        if user is None:  # another login of this account is being checked
            verify_password(None, password)
            return Login(LoginResult.WRONG)
    if user is not None and user.locked_until is not None and user.locked_until > now:
        verify_password(None, password)  # the same work as a real check
        return Login(LoginResult.LOCKED, locked_until=user.locked_until)
    # An unknown email costs the same scrypt as a wrong password: no timing oracle.
    matches = verify_password(user.password_hash if user is not None else None, password)
    if user is None or not matches:
        if user is not None:
            failed = CabinetUser.failed_logins + 1
            session.execute(
                update(CabinetUser)
                .where(CabinetUser.id == user.id)
                .values(
                    failed_logins=failed,
                    locked_until=case(
                        (failed >= MAX_FAILED_LOGINS, now + LOCK_TIME),
                        else_=CabinetUser.locked_until,
                    ),
                )
                .execution_options(synchronize_session=False)
            )
            session.refresh(user)
            if user.locked_until is not None and user.locked_until > now:
                return Login(LoginResult.LOCKED, locked_until=user.locked_until)
        return Login(LoginResult.WRONG)
    user.failed_logins = 0
    user.locked_until = None
    user.last_login_at = now
    if needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
    return Login(LoginResult.OK, user=user)


def unlock(session: Session, email: str) -> bool:
    user = find_user(session, email)
    if user is None:
        return False
    user.failed_logins = 0
    user.locked_until = None
    return True


def seed_sandbox_user(session: Session) -> bool:
    """The document's cabinet login for ePay's test merchant, if missing."""
    if find_user(session, SANDBOX_EMAIL) is not None:
        return False
    if find_by_client_id(session, SANDBOX_CLIENT_ID) is None:
        return False
    create_user(session, SANDBOX_CLIENT_ID, SANDBOX_EMAIL, SANDBOX_PASSWORD)
    return True
