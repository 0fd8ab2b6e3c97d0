"""Card payments: from a checked request to a final status.

The order of work never holds a database transaction across a network call. With an
acquirer's connector (a live terminal):

1. claim — one write transaction checks the terminal and inserts the transaction as
   NEW, taking the invoice (a unique constraint: concurrent claims of one invoice
   cannot both succeed);
2. authorize — the acquirer is called with the transaction id as its idempotency
   reference, outside any transaction;
3. finish — one write transaction records the outcome, its history line and the
   postLink notification that announces it (the outbox): all of them or none.

With the simulator (a test terminal, or the sandbox), which keeps its ledger in the same
database and answers without a network call, the three steps are one transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, cast

from sqlalchemy import Table, bindparam, insert, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value
from starlette.concurrency import run_in_threadpool

from tolem import carddata, reasons, velocity
from tolem.cards import service as cards
from tolem.cards.vault import CardVault
from tolem.db.base import new_row, utcnow
from tolem.db.direct import Direct
from tolem.db.engine import WouldBlock
from tolem.errors import API_ERROR, BadRequest, PaymentDeclined
from tolem.merchants import service as merchants
from tolem.merchants.models import Terminal
from tolem.notifications import service as notifications
from tolem.oauth.tokens import AccessToken
from tolem.payments.models import Status, Transaction, TransactionEvent
from tolem.processor.base import (
    Acquirer,
    AuthorizationRequest,
    Card,
    Challenge,
    ProcessorResult,
    Secure3DPolicy,
)

if TYPE_CHECKING:
    from tolem.runtime import Runtime

log = logging.getLogger("tolem.payments")

# The payment path writes with Core statements on the tables, run on the driver's cursor
# (tolem.db.direct): the ORM's unit of work, then SQLAlchemy's execution machinery, cost
# more CPU than the statements themselves (BENCHMARKS.md).
_TRANSACTIONS = cast(Table, Transaction.__table__)
_EVENTS = cast(Table, TransactionEvent.__table__)
_INSERT_TRANSACTION = Direct(insert(_TRANSACTIONS))
_INSERT_EVENT = Direct(insert(_EVENTS))
#: The outcome, if the payment is still NEW; what to set comes with the parameters.
_FINISH = Direct(
    update(_TRANSACTIONS).where(
        _TRANSACTIONS.c.id == bindparam("where_id"),
        _TRANSACTIONS.c.status == bindparam("where_status"),
    )
)

#: Reason codes of a failed 3-D Secure check: such a payment ends with status "3D".
SECURE3D_FAILURES = frozenset({473, 496, 499})


#: ``paymentType`` of a card verification: amount 0, the card checked and saved.
CARD_VERIFICATION = "cardVerification"
#: ``paymentType`` of a payment with a saved card (``POST /payments/cards/auth``).
CARD_ID = "cardId"


@dataclass(frozen=True)
class PaymentContext:
    token: AccessToken
    ip: str


@dataclass(frozen=True)
class PaymentOrder:
    """What a shop asks to be paid, whichever way it arrived (cryptopay or the page)."""

    amount: Decimal
    currency: str
    name: str
    invoice_id: str
    description: str
    invoice_id_alt: str = ""
    account_id: str = ""
    email: str = ""
    phone: str = ""
    post_link: str = ""
    failure_post_link: str = ""
    card_save: bool = False
    data: str = ""
    language: str = "rus"
    terminal_id: str = ""
    payment_type: str = ""
    back_link: str = ""
    failure_back_link: str = ""
    card_id: str = ""  # paying with this saved card

    @property
    def is_verification(self) -> bool:
        return self.payment_type.lower() == CARD_VERIFICATION.lower()

    @property
    def holds_card(self) -> bool:
        """Whether the claim seals the card to save it (a verification exists for that)."""
        return self.card_save or self.is_verification


def _reject(message: str, body: PaymentOrder, *, code: int = API_ERROR) -> BadRequest:
    return BadRequest(message, code=code, **_invoice_fields(body.invoice_id, body.account_id))


def _invoice_fields(invoice_id: str, account_id: str, tx_id: str = "") -> dict[str, str]:
    return {"invoiceId": invoice_id, "id": tx_id, "reference": "", "accountId": account_id}


def check_binding(token: AccessToken, body: PaymentOrder, card_terminal: str) -> str:
    """The terminal this payment runs on, after checking it against the token's binding."""
    if token.invoice_id and token.invoice_id != body.invoice_id:
        raise _reject(f"the token is bound to invoice {token.invoice_id}", body)
    if token.amount is not None and token.amount != body.amount:
        raise _reject(f"the token is bound to amount {token.amount}", body, code=470)
    if token.currency and token.currency != body.currency:
        raise _reject(f"the token is bound to currency {token.currency}", body)
    # The links (and secret_hash) bound in a token are the merchant's: a body that
    # holds the token may not send the notification, secret_hash and all, elsewhere.
    # Once a token binds a link, a body may not add a link of its own either (a failure
    # would otherwise go to the body's failurePostLink instead of the token's postLink).
    bound_links = {link for link in (token.post_link, token.failure_post_link) if link}
    for name, bound, sent in (
        ("postLink", token.post_link, body.post_link),
        ("failurePostLink", token.failure_post_link, body.failure_post_link),
    ):
        if sent and (sent != bound if bound else bound_links and sent not in bound_links):
            raise _reject(f"{name} differs from the links bound in the token", body)
    terminal_id = token.terminal_id or body.terminal_id or card_terminal
    if body.terminal_id and body.terminal_id != terminal_id:
        raise _reject("terminalId does not match the token's terminal", body, code=487)
    if card_terminal != terminal_id:
        raise _reject("the cryptogram names another terminal", body, code=487)
    return terminal_id


def claim(
    session: Session,
    ctx: PaymentContext,
    body: PaymentOrder,
    terminal_id: str,
    card: Card,
    *,
    fingerprint_key: bytes,
    vault: CardVault,
    enforce_hosts: bool = False,
    limits: velocity.Limits | None = None,
) -> tuple[Transaction, Terminal]:
    """Insert the payment as NEW, taking its invoice; hold its card if it is to be saved."""
    terminal = merchants.kept_terminal(session, ctx.token.merchant_id, terminal_id)
    if terminal is None:
        raise _reject("terminal not found for this client", body, code=464)
    if not terminal.accepts(body.currency):
        raise _reject(f"the terminal does not accept {body.currency}", body)
    if enforce_hosts:  # production: links only to the terminal's allowed hosts
        links = {
            "postLink": body.post_link or ctx.token.post_link,
            "failurePostLink": body.failure_post_link or ctx.token.failure_post_link,
            "backLink": body.back_link,
            "failureBackLink": body.failure_back_link,
        }
        if problem := merchants.link_problem(terminal, links):
            raise _reject(problem, body)
    if body.is_verification and body.amount != 0:
        raise _reject("a card verification has amount 0", body, code=470)
    if not body.is_verification and body.amount <= 0:
        raise _reject("amount: must be greater than zero", body, code=470)
    token = ctx.token
    tx, row = new_row(
        Transaction,
        merchant_id=token.merchant_id,
        terminal_id=terminal.id,
        invoice_id=body.invoice_id,
        invoice_claim=body.invoice_id[-6:],
        invoice_id_alt=body.invoice_id_alt,
        amount=body.amount,
        currency=body.currency,
        status=Status.NEW.value,
        payment_type=CARD_VERIFICATION
        if body.is_verification
        else CARD_ID
        if body.card_id
        else body.payment_type or "card",
        card_id=body.card_id,
        description=body.description,
        account_id=body.account_id,
        email=body.email,
        phone=body.phone,
        payer_name=body.name,
        language=body.language,
        data=body.data,
        ip=ctx.ip,
        post_link=body.post_link or token.post_link,
        failure_post_link=body.failure_post_link or token.failure_post_link,
        secret_hash=token.secret_hash,
        back_link=body.back_link,
        failure_back_link=body.failure_back_link,
        card_mask=carddata.mask(card.pan),
        card_fingerprint=carddata.fingerprint(fingerprint_key, card.pan),
        card_type=carddata.brand(card.pan),
    )
    if limits is not None:
        velocity.check(session, tx, limits)  # card-testing defence: 491 past a limit
    try:
        _INSERT_TRANSACTION.execute(session, row)
    except IntegrityError:
        raise _reject(
            f"invoice {body.invoice_id} is already used on this terminal "
            "(its last six digits must be unique)",
            body,
        ) from None
    add_event(session, tx, "created")
    if body.holds_card:
        cards.hold(session, vault, tx, card)
    return tx, terminal


def _event(tx: Transaction, kind: str, detail: str = "") -> TransactionEvent:
    return TransactionEvent(
        transaction_id=tx.id,
        kind=kind,
        status=tx.status,
        amount=tx.amount,
        reason_code=tx.reason_code,
        detail=detail,
    )


def add_event(session: Session, tx: Transaction, kind: str, detail: str = "") -> None:
    """Write a history line now (a Core insert of the row: no object, nothing to flush)."""
    _INSERT_EVENT.execute(
        session,
        {
            "transaction_id": tx.id,
            "at": utcnow(),
            "kind": kind,
            "status": tx.status,
            "amount": tx.amount,
            "reason_code": tx.reason_code,
            "detail": detail,
        },
    )


def captures(tx: Transaction, terminal: Terminal) -> bool:
    """Whether the acquirer is asked to charge at once (one-step) or only to authorize."""
    return not terminal.two_step and tx.payment_type != CARD_VERIFICATION


#: The "3ds-challenge" event's detail: what the acquirer was asked before the challenge,
#: so that the payment ends so even if the terminal's flow changes meanwhile.
CHALLENGE_CAPTURE = {True: "capture", False: "authorize"}


def authorize(
    acquirer: Acquirer, tx: Transaction, terminal: Terminal, card: Card
) -> ProcessorResult | None:
    """Ask the acquirer; None when it could not be reached (the outcome is unknown)."""
    try:
        return acquirer.authorize(authorization_request(tx, terminal, card))
    except Exception:
        log.exception("acquirer unreachable for transaction %s", tx.id)
        return None


def authorization_request(tx: Transaction, terminal: Terminal, card: Card) -> AuthorizationRequest:
    """What the acquirer is asked for a claimed payment (its id is the reference)."""
    return AuthorizationRequest(
        reference=tx.id,
        terminal_id=terminal.id,
        amount=tx.amount,
        currency=tx.currency,
        card=card,
        capture=captures(tx, terminal),
        # A saved card asks for 3-D Secure only when the terminal always does.
        secure3d=terminal.secure3d
        if tx.payment_type != CARD_ID or terminal.secure3d == Secure3DPolicy.ALWAYS
        else Secure3DPolicy.NEVER,
        merchant_name=terminal.name,
        language=tx.language,
        verify=tx.payment_type == CARD_VERIFICATION,
    )


def await_authentication(
    session: Session, tx: Transaction, challenge: Challenge, *, timeout: int, capture: bool
) -> None:
    """The issuer wants 3-D Secure: the payment stays NEW until the answer or expiry."""
    expires = utcnow() + timedelta(seconds=timeout)
    done = session.execute(
        update(Transaction)
        .where(Transaction.id == tx.id, Transaction.status == Status.NEW.value)
        .values(
            three_ds_md=challenge.md,
            three_ds_expires_at=expires,
            three_ds_pa_req=challenge.pa_req,
            three_ds_action=challenge.action,
            updated_at=utcnow(),
        )
    )
    if done.rowcount != 1:  # type: ignore[attr-defined]
        raise BadRequest("transaction is no longer in progress", code=469)
    tx.three_ds_md, tx.three_ds_expires_at = challenge.md, expires
    tx.three_ds_pa_req, tx.three_ds_action = challenge.pa_req, challenge.action
    session.add(_event(tx, "3ds-challenge", CHALLENGE_CAPTURE[capture]))


def finish(
    session: Session,
    tx: Transaction,
    result: ProcessorResult,
    *,
    capture: bool,
    secure: bool = False,
    card_held: bool | None = None,
) -> Transaction:
    """Record the acquirer's answer and return the transaction as it now stands.

    Only a transaction still NEW is changed. If another actor (a recovery sweep, a
    3-D Secure confirmation) finished it first, its recorded outcome stands and is
    returned unchanged. ``card_held`` says whether the claim held a card to save; a
    caller that does not know (None) has the database asked.
    """
    now = utcnow()
    # "secure" means the cardholder passed 3-D Secure, not merely that it was tried.
    secure = secure and result.reason_code not in SECURE3D_FAILURES
    if result.approved:
        if tx.payment_type == CARD_VERIFICATION:
            status = Status.VERIFIED  # checked, no money moved
        else:
            status = Status.CHARGE if capture else Status.AUTH
        values: dict[str, object] = {
            "status": status.value,
            "reason_code": 0,
            "reason": reasons.message(0),
            "reference": result.rrn,
            "approval_code": result.approval_code,
            "int_reference": result.int_reference,
            "issuer": result.issuer,
            "amount_charged": tx.amount if status is Status.CHARGE else Decimal("0.00"),
            "secure": secure,
            "updated_at": now,
        }
    else:
        failed = (
            Status.THREE_DS_FAILED if result.reason_code in SECURE3D_FAILURES else Status.FAILED
        )
        values = {
            "status": failed.value,
            "secure": secure,
            "reason_code": result.reason_code,
            "reason": reasons.message(result.reason_code),
            "issuer": result.issuer,
            "invoice_claim": None,  # a declined order may be retried with its invoice
            "updated_at": now,
        }
    session.flush()  # changes made to tx in this session go first, as the ORM would order them
    done = _FINISH.execute(session, {**values, "where_id": tx.id, "where_status": Status.NEW.value})
    if done != 1:
        current = session.get(Transaction, tx.id, populate_existing=True)
        if current is None or current.status == Status.NEW.value:
            raise BadRequest("transaction is no longer in progress", code=469)
        return current
    for key, value in values.items():  # as stored: nothing left for the flush to write
        set_committed_value(tx, key, value)
    card_id = cards.settle(session, tx, approved=result.approved) if card_held is not False else ""
    if card_id:
        session.execute(
            update(_TRANSACTIONS).where(_TRANSACTIONS.c.id == tx.id).values(card_id=card_id)
        )
        set_committed_value(tx, "card_id", card_id)
    add_event(session, tx, "authorized" if result.approved else "declined")
    notifications.enqueue(session, tx)  # the postLink commits with the outcome, or neither
    log.info(
        "payment %s invoice=%s card=%s status=%s code=%s",
        tx.id,
        tx.invoice_id,
        tx.card_mask,
        tx.status,
        tx.reason_code,
    )
    return tx


def pay(
    rt: Runtime,
    ctx: PaymentContext,
    order: PaymentOrder,
    card: Card,
    card_terminal: str,
) -> tuple[Transaction, Challenge | None]:
    """The payment core shared by cryptopay and the hosted page: claim, authorize, finish.

    Returns the transaction and, when the issuer wants 3-D Secure, its challenge (the
    payment then stays NEW). Raises :class:`BadRequest` for a refused order and
    :class:`PaymentDeclined` for a declined or unanswered payment.

    On a test terminal the acquirer is the simulator, whose ledger lives in the same
    database: the claim, the simulator's decision and the outcome (with its postLink)
    then commit as one transaction, so a crash keeps all of it or none, and a payment
    costs one commit instead of three. A connector is called between two transactions,
    as the module's docstring says. This waits for the database: run it in a thread
    (:func:`pay_on_the_loop` is the event loop's way).
    """
    terminal_id = check_binding(ctx.token, order, card_terminal)
    work = _payment(rt, ctx, order, card, terminal_id, on_the_loop=False)
    tx, terminal, challenge, connector = rt.db.transact(work)
    if connector is not None:
        answer = authorize(connector, tx, terminal, card)
        if answer is None:
            raise unreachable(tx)
        tx, challenge = rt.db.transact(
            lambda session: _conclude(rt, session, tx, terminal, order, answer)
        )
    return _answered(tx, challenge)


async def pay_on_the_loop(
    rt: Runtime,
    ctx: PaymentContext,
    order: PaymentOrder,
    card: Card,
    card_terminal: str,
) -> tuple[Transaction, Challenge | None]:
    """:func:`pay` without a thread (``Database.transact_on_the_loop``): on SQLite the
    payment's transaction joins the loop's group commit (tolem.db.group), one commit
    for the payments of a turn; on PostgreSQL its statements wait on the loop. A
    payment that needs a connector's network call is made by :func:`pay` in a thread:
    at once when the gateway has a connector (its payments would mostly be claimed here,
    undone and claimed again), else if its terminal turns out to need one."""
    if rt.acquirer is not None:
        return await run_in_threadpool(pay, rt, ctx, order, card, card_terminal)
    terminal_id = check_binding(ctx.token, order, card_terminal)
    work = _payment(rt, ctx, order, card, terminal_id, on_the_loop=True)
    try:
        tx, _terminal, challenge, _connector = await rt.db.transact_on_the_loop(work)
    except WouldBlock:  # a connector: nothing was kept; its call runs in a thread
        return await run_in_threadpool(pay, rt, ctx, order, card, card_terminal)
    return _answered(tx, challenge)


def _payment(
    rt: Runtime,
    ctx: PaymentContext,
    order: PaymentOrder,
    card: Card,
    terminal_id: str,
    *,
    on_the_loop: bool,
) -> Callable[[Session], tuple[Transaction, Terminal, Challenge | None, Acquirer | None]]:
    """The payment's first transaction: the claim, and on a test terminal the whole
    payment. The last item it returns is the connector still to be called, if any."""

    def claimed(
        session: Session,
    ) -> tuple[Transaction, Terminal, Challenge | None, Acquirer | None]:
        tx, terminal = claim(
            session,
            ctx,
            order,
            terminal_id,
            card,
            fingerprint_key=rt.keys.fingerprint_key,
            vault=rt.vault,
            enforce_hosts=not rt.settings.is_sandbox,
            limits=rt.velocity_limits,
        )
        acquirer = rt.acquirer_for(terminal)
        if acquirer is not rt.simulator:
            if on_the_loop:  # no network call on the event loop: the claim is undone
                raise WouldBlock
            return tx, terminal, None, acquirer
        # The simulator's ledger shares this transaction.
        result = rt.simulator.authorize_within(session, authorization_request(tx, terminal, card))
        done, challenge = _conclude(rt, session, tx, terminal, order, result)
        return done, terminal, challenge, None

    return claimed


def _answered(tx: Transaction, challenge: Challenge | None) -> tuple[Transaction, Challenge | None]:
    if challenge is None and not succeeded(tx):
        raise declined(tx)
    return tx, challenge


def _conclude(
    rt: Runtime,
    session: Session,
    tx: Transaction,
    terminal: Terminal,
    order: PaymentOrder,
    result: ProcessorResult,
) -> tuple[Transaction, Challenge | None]:
    """Record the acquirer's answer: a challenge to wait on, or the outcome."""
    if result.challenge is not None:
        await_authentication(
            session,
            tx,
            result.challenge,
            timeout=rt.settings.secure3d_timeout,
            capture=captures(tx, terminal),
        )
        return tx, result.challenge
    tx = finish(session, tx, result, capture=not terminal.two_step, card_held=order.holds_card)
    return tx, None


def succeeded(tx: Transaction) -> bool:
    return Status(tx.status).succeeded


def declined(tx: Transaction) -> PaymentDeclined:
    return PaymentDeclined(
        reasons.message(tx.reason_code),
        code=tx.reason_code,
        **_invoice_fields(tx.invoice_id, tx.account_id, tx.id),
    )


def unreachable(tx: Transaction) -> PaymentDeclined:
    return PaymentDeclined(
        "The processor did not answer; the payment stays in progress (status NEW)",
        code=458,
        **_invoice_fields(tx.invoice_id, tx.account_id, tx.id),
    )
