"""Issuing and checking access tokens."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy.orm import Session

from tolem import fields
from tolem.db.engine import Directory
from tolem.errors import BadRequest, Unauthorized
from tolem.merchants import service as merchants
from tolem.oauth.tokens import AccessToken, TokenInvalid, TokenSealer

DEFAULT_SCOPE = "payment"


class TokenError(BadRequest):
    """An OAuth error: ``error`` and ``error_description`` as RFC 6749 plus ePay's code."""

    def __init__(self, error: str, description: str, *, status: int = 400) -> None:
        super().__init__(description, error=error, error_description=description)
        self.status_code = status


@dataclass(frozen=True)
class IssuedToken:
    access_token: str
    expires_in: int
    scope: str


def first_field(form: Mapping[str, str], name: str) -> str | None:
    """A form field by name, ignoring case (ePay clients send invoiceID, invoiceId, …)."""
    if name in form:
        return form[name]
    lowered = name.lower()
    for key, value in form.items():
        if key.lower() == lowered:
            return value
    return None


def issue(
    session: Session | None,
    sealer: TokenSealer,
    form: Mapping[str, str],
    *,
    ttl: int,
    directory: Directory,
    enforce_hosts: bool = False,
) -> IssuedToken:
    """A client_credentials token. With ``session`` None the merchant is looked up only
    in the database's directory (merchants.NotKept if it is not there)."""
    grant = (first_field(form, "grant_type") or "").strip()
    if not grant:
        raise TokenError("invalid_request", "grant_type is required")
    if grant != "client_credentials":
        raise TokenError("unsupported_grant_type", f"grant_type {grant!r} is not supported")
    client_id = (first_field(form, "client_id") or "").strip()
    client_secret = first_field(form, "client_secret") or ""
    if not client_id or not client_secret:
        raise TokenError("invalid_request", "client_id and client_secret are required")
    terminal_id = (first_field(form, "terminal") or "").strip()
    # The merchant and the terminal in one query, or none (the database's Directory).
    merchant, terminal = merchants.known_credentials(
        session, client_id, client_secret, terminal_id, directory=directory
    )
    if merchant is None:
        raise TokenError("invalid_client", "invalid client credentials", status=401)

    try:
        if terminal_id and terminal is None:
            raise fields.FieldError("terminal", "no such terminal for this client")
        raw_invoice = first_field(form, "invoiceID")
        invoice_id = fields.invoice(raw_invoice, "invoiceID") if raw_invoice else ""
        raw_amount = first_field(form, "amount")
        amount: Decimal | None = (
            fields.amount(raw_amount, allow_zero=True) if raw_amount not in (None, "") else None
        )
        raw_currency = first_field(form, "currency")
        currency = fields.currency(raw_currency) if raw_currency else ""
        if currency and terminal is not None and not terminal.accepts(currency):
            raise fields.FieldError("currency", f"terminal does not accept {currency}")
        post_link = fields.link(first_field(form, "postLink"), "postLink")
        failure_post_link = fields.link(first_field(form, "failurePostLink"), "failurePostLink")
        if enforce_hosts and terminal is not None:  # production: the terminal's host list
            links = {"postLink": post_link, "failurePostLink": failure_post_link}
            if problem := merchants.link_problem(terminal, links):
                raise TokenError("invalid_request", problem)
        # Both are the shop's free text: secret_hash is stored with the payment and sent
        # back in its postLink, scope is echoed. Neither may hold a card number.
        secret_hash = fields.free_text(
            first_field(form, "secret_hash"), "secret_hash", max_length=500
        )
        scope = fields.free_text(first_field(form, "scope"), "scope", max_length=500).strip()
    except fields.FieldError as exc:
        raise TokenError("invalid_request", str(exc)) from exc

    token = AccessToken(
        merchant_id=merchant.id,
        terminal_id=terminal.id if terminal else "",
        scope=scope or DEFAULT_SCOPE,
        invoice_id=invoice_id,
        amount=amount,
        currency=currency,
        post_link=post_link,
        failure_post_link=failure_post_link,
        secret_hash=secret_hash,
        expires_at=int(time.time()) + ttl,
    )
    return IssuedToken(sealer.seal(token), ttl, token.scope)


def bearer(sealer: TokenSealer, authorization: str | None) -> AccessToken:
    """The token of an ``Authorization: Bearer …`` header, or 401."""
    if not authorization:
        raise Unauthorized("Authorization header with a Bearer token is required")
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise Unauthorized("Authorization must be 'Bearer <access_token>'")
    try:
        token = sealer.open(value.strip())
    except TokenInvalid as exc:
        raise Unauthorized("invalid access token") from exc
    if token.expired():
        raise Unauthorized("access token expired")
    return token
