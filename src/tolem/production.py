"""What production mode refuses to start with, beyond the keys (:mod:`tolem.keys`).

ePay's sandbox credentials are published: a production database that holds the test
merchant, its cabinet login, or a live merchant whose ClientSecret is the published one
would let anyone take tokens. Links handed to shops and customers must be https.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.orm import Session

from tolem import sandbox
from tolem.cabinet.users import find_user
from tolem.config import Settings
from tolem.merchants.models import Merchant, Terminal
from tolem.merchants.service import secret_matches

_OWN_DATABASE = "production needs a database of its own, never one sandbox mode has used"


class ProductionError(RuntimeError):
    """Production mode cannot start; the message says why and how to fix it."""


def check_settings(settings: Settings) -> None:
    url = settings.effective_public_base_url
    parts = urlsplit(url)
    if parts.scheme == "https":
        return
    host = parts.hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:  # plain http only on this machine (tests, a local try)
        raise ProductionError(
            f"the public address {url} is not https: set TOLEM_PUBLIC_BASE_URL to the "
            "https:// origin of the TLS proxy in front of tolem"
        )


def check_database(session: Session) -> None:
    if session.scalars(
        select(Merchant.id).where(Merchant.client_id == sandbox.CLIENT_ID)
    ).first() or session.get(Terminal, sandbox.TERMINAL_ID):
        raise ProductionError(
            f"the database holds ePay's public test merchant (ClientID "
            f"'{sandbox.CLIENT_ID}'), seeded by sandbox mode: {_OWN_DATABASE}"
        )
    if find_user(session, sandbox.CABINET_EMAIL) is not None:
        raise ProductionError(
            f"the database holds the sandbox cabinet login {sandbox.CABINET_EMAIL}: "
            + _OWN_DATABASE
        )
    live = select(Merchant).where(
        Merchant.id.in_(select(Terminal.merchant_id).where(Terminal.is_test.is_(False)))
    )
    for merchant in session.scalars(live):
        if secret_matches(merchant, sandbox.CLIENT_SECRET):
            raise ProductionError(
                f"merchant {merchant.client_id} has live terminals and the published sandbox "
                f"ClientSecret: give it a secret of its own (the cabinet's Terminals page)"
            )
