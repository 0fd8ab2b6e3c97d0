"""The hosted page's rules: open a payment link, take the card, say where to go next.

Nothing about a page visit is stored: the link (``params``) carries the order and its
token, and every step checks them again. What the page needs across requests (the
payment it made, its 3-D Secure challenge, the back links) lives on the transaction.
A payment's pages are addressed by its id plus a keyed MAC of it (:func:`handle`), so
nobody can look at another payment's result by guessing ids.

Paying twice is impossible for the same reason cryptopay cannot: the invoice is
claimed by a unique constraint. A double submit, a reload or the back button finds
the payment that holds the invoice and shows it instead of paying again.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass, replace
from urllib.parse import urlencode, urlsplit, urlunsplit

import idna
from sqlalchemy import select
from sqlalchemy.orm import Session

from tolem import carddata, fields, wire
from tolem.errors import BadRequest, PaymentDeclined, TolemError, Unauthorized
from tolem.merchants import service as merchants
from tolem.merchants.models import Terminal
from tolem.oauth import service as oauth
from tolem.oauth.tokens import AccessToken
from tolem.payform.params import PayformRequest, SessionExpired, access_token, decode, parse
from tolem.payments import service as payments
from tolem.payments.models import Status, Transaction
from tolem.processor.base import Card
from tolem.runtime import Runtime

_DIGITS = re.compile(r"[0-9]{12,19}")
_EXPIRY = re.compile(r"(0[1-9]|1[0-2])\s*/?\s*([0-9]{2}|20[0-9]{2})")
_CVC = re.compile(r"[0-9]{3,4}")
_HOST = re.compile(r"[a-z0-9.-]+(:[0-9]{1,5})?")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


class PageRefused(Exception):
    """The shop's link cannot be paid: wrong binding, unknown terminal, taken invoice."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class CardProblem(ValueError):
    """A card field the cardholder must correct; ``field`` is the form field's name."""

    def __init__(self, field: str) -> None:
        super().__init__(field)
        self.field = field


@dataclass(frozen=True)
class Page:
    """A payment link that checked out: what the card form shows and pays."""

    request: PayformRequest
    token: AccessToken
    terminal: Terminal
    holder: Transaction | None  # the payment that already holds this invoice, if any


@dataclass(frozen=True)
class CardForm:
    pan: str
    exp: str
    cvc: str
    name: str
    email: str
    phone: str


def open_page(rt: Runtime, params: str) -> Page:
    """Decode and check a link: :class:`ParamsError`, :class:`SessionExpired` or PageRefused."""
    pairs = decode(params)
    token_text = access_token(pairs)  # the session first, as the live page does
    try:
        token = oauth.bearer(rt.sealer, f"Bearer {token_text}")
    except Unauthorized as exc:
        raise SessionExpired(exc.message) from None
    request = parse(pairs)
    order = request.order
    if not (token.invoice_id and token.amount is not None and token.currency):
        # The page's parameters are in the cardholder's hands: what the token does not
        # bind, the cardholder could change.
        raise PageRefused(
            "the payment page needs a token bound to invoiceID, amount and currency", 100
        )
    try:
        terminal_id = payments.check_binding(token, order, token.terminal_id or order.terminal_id)
    except TolemError as exc:
        raise PageRefused(exc.message, exc.code) from None
    with rt.db.read() as session:
        terminal = merchants.terminal_of(session, token.merchant_id, terminal_id)
        if terminal is None:
            raise PageRefused("terminal not found for this client", 464)
        if not terminal.accepts(order.currency):
            raise PageRefused(f"the terminal does not accept {order.currency}", 100)
        holder = invoice_holder(session, terminal.id, order.invoice_id)
    if holder is not None and not _same_order(holder, order):
        raise PageRefused(
            f"invoice {order.invoice_id} is already used on this terminal "
            "(its last six digits must be unique)",
            100,
        )
    return Page(request, token, terminal, holder)


def _same_order(tx: Transaction, order: payments.PaymentOrder) -> bool:
    """Whether the payment holding the invoice is this very order (then: show it)."""
    verification = tx.payment_type == payments.CARD_VERIFICATION
    return (
        tx.invoice_id == order.invoice_id
        and tx.amount == order.amount
        and tx.currency == order.currency
        and verification == order.is_verification
    )


def invoice_holder(session: Session, terminal_id: str, invoice_id: str) -> Transaction | None:
    """The payment holding this invoice on the terminal (approved or in progress)."""
    return session.scalars(
        select(Transaction).where(
            Transaction.terminal_id == terminal_id,
            Transaction.invoice_claim == invoice_id[-6:],
        )
    ).first()


def read_card(form: CardForm) -> Card:
    """The card as typed, checked as the page's script checks it; :class:`CardProblem`."""
    pan = re.sub(r"[\s-]", "", form.pan)
    if not _DIGITS.fullmatch(pan) or not carddata.luhn_ok(pan):
        raise CardProblem("pan")
    expiry = _EXPIRY.fullmatch(form.exp.strip())
    if expiry is None:
        raise CardProblem("exp")
    cvc = form.cvc.strip()
    if not _CVC.fullmatch(cvc) or len(cvc) != carddata.cvc_length(pan):
        raise CardProblem("cvc")
    # A card number typed into a free-text field would be stored in clear: refuse it.
    name = form.name
    if not name.strip() or len(name) > 200 or wire.text_problem(name) or carddata.holds_pan(name):
        raise CardProblem("name")
    email = form.email.strip()
    if email and (
        wire.text_problem(email) or not _EMAIL.fullmatch(email) or carddata.holds_pan(email)
    ):
        raise CardProblem("email")
    if wire.text_problem(form.phone) or len(form.phone) > 50 or carddata.holds_pan(form.phone):
        raise CardProblem("phone")
    year = int(expiry.group(2))
    return Card(
        pan=pan,
        exp_month=int(expiry.group(1)),
        exp_year=year if year > 99 else 2000 + year,
        cvc=cvc,
    )


def pay(rt: Runtime, page: Page, form: CardForm, card: Card, ip: str) -> Transaction:
    """Pay the page's order with the card: the same core as cryptopay.

    Returns the transaction however it ended (approved, declined, waiting for 3-D
    Secure). If the invoice was taken meanwhile (a double submit), returns the payment
    that holds it. Other refusals raise :class:`PageRefused`.
    """
    order = replace(
        page.request.order,
        name=form.name.strip()[:200],
        email=form.email.strip()[:200] or page.request.order.email,
        phone=form.phone.strip()[:50] or page.request.order.phone,
    )
    ctx = payments.PaymentContext(token=page.token, ip=ip)
    try:
        tx, _challenge = payments.pay(rt, ctx, order, card, page.terminal.id)
        return tx
    except PaymentDeclined as exc:  # declined or unanswered: the transaction tells
        tx_id = str(exc.fields.get("id", ""))
        with rt.db.read() as session:
            found = session.get(Transaction, tx_id) if tx_id else None
        if found is None:
            raise PageRefused(exc.message, exc.code) from None
        return found
    except BadRequest as exc:
        with rt.db.read() as session:
            holder = invoice_holder(session, page.terminal.id, order.invoice_id)
        if holder is not None and _same_order(holder, order):
            return holder  # a second submit of the same order: show the first
        raise PageRefused(exc.message, exc.code) from None


# --- a payment's own pages --------------------------------------------------------------


def handle(rt: Runtime, tx_id: str) -> str:
    """A MAC of the transaction id: the key to its result and 3-D Secure pages."""
    key = hmac.new(rt.keys.token_key, b"tolem-payform-handle", hashlib.sha256).digest()
    mac = hmac.new(key, tx_id.encode("ascii", "replace"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac[:16]).rstrip(b"=").decode("ascii")


def find(rt: Runtime, tx_id: str, key: str) -> Transaction | None:
    """The transaction of a page address, or None if the MAC is wrong."""
    if len(tx_id) > 36 or not key.isascii() or not hmac.compare_digest(handle(rt, tx_id), key):
        return None
    with rt.db.read() as session:
        return session.get(Transaction, tx_id)


def waiting_for_3ds(tx: Transaction) -> bool:
    return tx.status == Status.NEW.value and bool(tx.three_ds_md and tx.three_ds_action)


def back_url(tx: Transaction) -> str:
    """Where the shop wants the cardholder now, with what tolem appends (docs/protocol.md).

    Success goes to backLink; a failure to failureBackLink, else backLink. Appended:
    ``invoiceId``, ``status`` and, on success, ``reference``; on failure, ``code``.
    """
    ok = payments.succeeded(tx)
    link = tx.back_link if ok else tx.failure_back_link or tx.back_link
    if not link:
        return ""
    extra = {"invoiceId": tx.invoice_id, "status": tx.status}
    if ok:
        extra["reference"] = tx.reference
    else:
        extra["code"] = str(tx.reason_code)
    parts = urlsplit(link)
    # The shop's own query stays byte for byte; ours follows it.
    query = f"{parts.query}&{urlencode(extra)}" if parts.query else urlencode(extra)
    return urlunsplit(parts._replace(query=query))


def origin(link: str) -> str:
    """``scheme://host[:port]`` of an http(s) link, for the page's form-action policy."""
    try:
        checked = fields.link(link, "link")
    except fields.FieldError:
        return ""
    parts = urlsplit(checked)
    host, _, port = parts.netloc.rpartition("@")[2].partition(":")
    try:  # a browser compares the punycode of an internationalised name (UTS 46, IDNA 2008)
        netloc = idna.encode(host, uts46=True, transitional=False).decode("ascii")
    except (idna.IDNAError, UnicodeError):
        return ""
    netloc = f"{netloc}:{port}" if port else netloc
    # It goes into a header: only a plain host[:port], nothing that could add a directive.
    if not checked or not _HOST.fullmatch(netloc):
        return ""
    return f"{parts.scheme.lower()}://{netloc}"
