"""Merchants, terminals and their credentials.

ClientSecret storage: HMAC-SHA256 keyed by a random per-merchant salt. Secrets that
tolem issues carry 256 bits of entropy, so a fast keyed hash resists guessing as
well as a slow password hash would, without capping token throughput; the
comparison is constant-time. (The sandbox merchant's secret is public by design.)
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from tolem import sandbox
from tolem.merchants.models import Merchant, Terminal
from tolem.processor.base import Secure3DPolicy

SANDBOX_CLIENT_ID = sandbox.CLIENT_ID
SANDBOX_CLIENT_SECRET = sandbox.CLIENT_SECRET
SANDBOX_TERMINAL_ID = sandbox.TERMINAL_ID
SANDBOX_MERCHANT_NAME = sandbox.MERCHANT_NAME


@dataclass(frozen=True)
class Credentials:
    """What a new merchant is told once: the secret is not stored anywhere."""

    merchant_id: str
    name: str
    client_id: str
    client_secret: str
    terminal_id: str


def digest_secret(salt: str, secret: str) -> str:
    return hmac.new(bytes.fromhex(salt), secret.encode("utf-8"), hashlib.sha256).hexdigest()


def secret_matches(merchant: Merchant, secret: str) -> bool:
    return hmac.compare_digest(digest_secret(merchant.secret_salt, secret), merchant.secret_digest)


def create_merchant(
    session: Session,
    name: str,
    *,
    client_id: str | None = None,
    client_secret: str | None = None,
    terminal_id: str | None = None,
    two_step: bool = True,
    currencies: str = "KZT USD",
    is_test: bool = True,
    secure3d: str = "card",
) -> Credentials:
    name = name.strip()
    if not name:
        raise ValueError("a merchant needs a name")
    if secure3d not in Secure3DPolicy.ALL:
        raise ValueError(f"secure3d must be one of {', '.join(Secure3DPolicy.ALL)}")
    client_id = client_id or f"m_{secrets.token_hex(8)}"
    client_secret = client_secret or secrets.token_urlsafe(32)
    salt = secrets.token_hex(16)
    merchant = Merchant(
        name=name,
        client_id=client_id,
        secret_salt=salt,
        secret_digest=digest_secret(salt, client_secret),
    )
    session.add(merchant)
    session.flush()
    terminal = Terminal(
        merchant_id=merchant.id,
        name=name,
        two_step=two_step,
        currencies=currencies,
        is_test=is_test,
        secure3d=secure3d,
    )
    if terminal_id:
        terminal.id = terminal_id
    session.add(terminal)
    session.flush()
    return Credentials(merchant.id, name, client_id, client_secret, terminal.id)


def seed_sandbox(session: Session) -> bool:
    """Create ePay's public test merchant if it is missing. True if it was created."""
    if find_by_client_id(session, SANDBOX_CLIENT_ID) is not None:
        return False
    create_merchant(
        session,
        SANDBOX_MERCHANT_NAME,
        client_id=SANDBOX_CLIENT_ID,
        client_secret=SANDBOX_CLIENT_SECRET,
        terminal_id=SANDBOX_TERMINAL_ID,
    )
    return True


def find_by_client_id(session: Session, client_id: str) -> Merchant | None:
    return session.scalars(select(Merchant).where(Merchant.client_id == client_id)).first()


def authenticate(session: Session, client_id: str, client_secret: str) -> Merchant | None:
    merchant = find_by_client_id(session, client_id)
    if merchant is None:
        # Spend the same time as a real check so that client ids cannot be probed.
        hmac.compare_digest(digest_secret("00" * 16, client_secret), "0" * 64)
        return None
    return merchant if secret_matches(merchant, client_secret) else None


def terminal_of(session: Session, merchant_id: str, terminal_id: str) -> Terminal | None:
    """The terminal, if it belongs to this merchant (queries are merchant-scoped)."""
    return session.scalars(
        select(Terminal).where(Terminal.id == terminal_id, Terminal.merchant_id == merchant_id)
    ).first()


def terminals_of(session: Session, merchant_id: str) -> list[Terminal]:
    return list(
        session.scalars(
            select(Terminal)
            .where(Terminal.merchant_id == merchant_id)
            .order_by(Terminal.created_at)
        )
    )


def list_merchants(session: Session) -> list[tuple[Merchant, list[Terminal]]]:
    merchants = session.scalars(select(Merchant).order_by(Merchant.created_at)).all()
    return [(m, terminals_of(session, m.id)) for m in merchants]
