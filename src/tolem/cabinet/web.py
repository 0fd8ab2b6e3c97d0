"""The merchant cabinet: login, logout and the transactions (list, detail, operations).

    GET  /cabinet/login          the login form (?lang=ru|en, remembered in a cookie)
    POST /cabinet/login          check the password: a session, or the form again
    POST /cabinet/logout         end the session
    GET  /cabinet/               to the transactions
    GET  /cabinet/transactions   the merchant's payments, newest first, filterable
    GET  /cabinet/transactions/{id}                  one payment: fields, history,
                                                     operations, postLinks and attempts
    POST /cabinet/transactions/{id}/{kind}           charge|cancel|refund: the
                                                     confirmation page
    POST /cabinet/transactions/{id}/{kind}/confirm   perform it (the API's own code)

Sessions, cookies and the CSRF and Origin checks are in tolem.cabinet.common; every
query is scoped to the logged-in user's merchant.

An operation takes two POSTs. The first shows "Confirm refund of 30.00 KZT?" with a
confirmation value: an HMAC, keyed by the session's CSRF token, over the transaction,
the kind, the amount and the moment the transaction last changed. The second checks it
and runs tolem.operations.actions.run with the merchant's scope and that moment: the
conditional update that takes the operation's lock or reserves the refund also
requires the transaction unchanged, so one confirmation performs at most one operation,
even posted twice at once, and every rule of the API applies as is.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from sqlalchemy import Select, and_, func, literal_column, or_, select
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from tolem import fields, wire
from tolem.cabinet.common import (
    LOGIN_COOKIE,
    SESSION_COOKIE,
    Who,
    flash,
    flash_url,
    forbidden,
    forget_cookie,
    language,
    mac,
    not_found,
    page,
    posted,
    read_form,
    redirect,
    same,
    same_origin,
    set_cookie,
    texts,
    to_login,
    who_is,
)
from tolem.cabinet.sessions import end_session, start_session
from tolem.cabinet.users import LoginResult, log_in
from tolem.notifications import service as notifications
from tolem.notifications.models import DeliveryAttempt, Notification
from tolem.operations import actions
from tolem.pages import add_texts, amount_text
from tolem.payments.models import Operation, Status, Transaction, TransactionEvent
from tolem.runtime import Runtime, runtime

log = logging.getLogger("tolem.cabinet")

router = APIRouter(include_in_schema=False)

#: Transactions per page, and the most a ``?limit=`` may ask for.
PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
STATUSES = [status.value for status in Status]


# --- login and logout ----------------------------------------------------------------


def _login_page(
    rt: Runtime,
    request: Request,
    *,
    status_code: int = 200,
    error: str = "",
    email: str = "",
    locked_until: str = "",
) -> Response:
    # One token per browser, kept while it stays: two open login tabs both work.
    token = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(32)
    response = page(
        rt,
        request,
        "cabinet_login.html",
        status_code=status_code,
        user=None,
        csrf=token,
        error=error,
        email=email,
        locked_until=locked_until,
    )
    set_cookie(response, rt, request, LOGIN_COOKIE, token, 3600)
    return response


@router.get("/cabinet/login")
async def login_form(request: Request, rt: Annotated[Runtime, Depends(runtime)]) -> Response:
    if SESSION_COOKIE in request.cookies:
        who = await who_is(rt, request)
        if who is not None:
            return redirect("/cabinet/")
    return _login_page(rt, request)


@router.post("/cabinet/login")
async def login(request: Request, rt: Annotated[Runtime, Depends(runtime)]) -> Response:
    form = await read_form(request)
    cookie = request.cookies.get(LOGIN_COOKIE, "")
    if not same_origin(rt, request) or not same(form.get("csrf", ""), cookie):
        return forbidden(rt, request)
    email = form.get("email", "")[:254]
    password = form.get("password", "")[:1025]
    result, token, locked_until = await run_in_threadpool(_check, rt, email, password)
    if result is LoginResult.OK and token is not None:
        response = redirect("/cabinet/")
        set_cookie(response, rt, request, SESSION_COOKIE, token, None)
        forget_cookie(response, rt, request, LOGIN_COOKIE)
        return response
    if result is LoginResult.LOCKED:
        until = locked_until.strftime("%H:%M") if locked_until else ""
        return _login_page(
            rt, request, status_code=423, error="locked", email=email, locked_until=until
        )
    return _login_page(rt, request, status_code=401, error="wrong", email=email)


def _check(
    rt: Runtime, email: str, password: str
) -> tuple[LoginResult, str | None, datetime | None]:
    """The password check (scrypt: 32 MiB and tens of milliseconds) and, if it passes,
    the new session; run in the threadpool, never on the event loop."""
    with rt.db.write() as session:
        outcome = log_in(session, email, password)
        if outcome.result is not LoginResult.OK or outcome.user is None:
            if outcome.result is LoginResult.LOCKED:
                log.warning("cabinet login refused: account locked")
            return outcome.result, None, outcome.locked_until
        token, _row = start_session(session, outcome.user)
        log.info("cabinet login: %s", outcome.user.email)
        return outcome.result, token, None


@router.post("/cabinet/logout")
async def logout(request: Request, rt: Annotated[Runtime, Depends(runtime)]) -> Response:
    form = await read_form(request)
    token = request.cookies.get(SESSION_COOKIE)
    if not same_origin(rt, request):
        return forbidden(rt, request)
    who = await who_is(rt, request)
    if who is None:
        return to_login(rt, request)
    if not same(form.get("csrf", ""), who.csrf):
        return forbidden(rt, request)
    await run_in_threadpool(_end, rt, token)
    return to_login(rt, request)


def _end(rt: Runtime, token: str | None) -> None:
    with rt.db.write() as session:
        end_session(session, token)


# --- pages ---------------------------------------------------------------------------


@router.get("/cabinet")
@router.get("/cabinet/")
async def home(request: Request, rt: Annotated[Runtime, Depends(runtime)]) -> Response:
    who = await who_is(rt, request)
    if who is None:
        return to_login(rt, request)
    return redirect("/cabinet/dashboard")


# --- the list ------------------------------------------------------------------------

add_texts(
    {
        "ru": {
            "cab_date_from": "С даты",
            "cab_date_to": "По дату",
            "cab_amount_min": "Сумма от",
            "cab_amount_max": "Сумма до",
            "cab_card_filter": "Карта: 6 первых и/или 4 последних цифры",
            "cab_bad_date": "Дата — в формате ГГГГ-ММ-ДД, например 2026-11-30.",
            "cab_bad_dates": "Дата «с» позже даты «по».",
            "cab_bad_filter_amount": "Сумма — число не меньше нуля, не более двух знаков "
            "после запятой.",
            "cab_bad_amounts": "Сумма «от» больше суммы «до».",
            "cab_bad_card": "Карта: первые 6 и/или последние 4 цифры, например 440563, 5096 "
            "или 440563...5096.",
            "cab_bad_status": "Такого статуса нет.",
            "cab_bad_text": "Слишком длинное значение (не более 100 знаков).",
            "cab_bad_page": "Ссылка на страницу повреждена; начните с последних транзакций.",
        },
        "en": {
            "cab_date_from": "From date",
            "cab_date_to": "To date",
            "cab_amount_min": "Amount from",
            "cab_amount_max": "Amount to",
            "cab_card_filter": "Card: first 6 and/or last 4 digits",
            "cab_bad_date": "Dates are YYYY-MM-DD, for example 2026-11-30.",
            "cab_bad_dates": "The “from” date is after the “to” date.",
            "cab_bad_filter_amount": "An amount is a number, zero or more, with at most two "
            "decimal places.",
            "cab_bad_amounts": "The “from” amount is above the “to” amount.",
            "cab_bad_card": "Card: the first 6 and/or the last 4 digits, for example 440563, "
            "5096 or 440563...5096.",
            "cab_bad_status": "There is no such status.",
            "cab_bad_text": "Too long (100 characters at most).",
            "cab_bad_page": "The page link is damaged; start again from the newest payments.",
        },
    }
)

#: The list's query parameters, in the order of the form (and of the links).
FILTER_FIELDS = ("from", "to", "status", "invoice", "amount_min", "amount_max", "card", "account")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_MASK_CHARS = re.compile(r"[\s\-]")
_HIDDEN = re.compile(r"[.*xX\u2022]+")  # what stands for the hidden digits: ..., ****, xx
#: ePay's card mask is always "440563...5096": first six, three dots, last four.
#: substr(card_mask, 1, 6) and substr(card_mask, 10) are the indexed expressions
#: (migration 0009); the literals stay literals so that the planner matches the index.
card_first6_of = func.substr(Transaction.card_mask, literal_column("1"), literal_column("6"))
card_last4_of = func.substr(Transaction.card_mask, literal_column("10"))


class FilterError(ValueError):
    """A filter the list cannot apply: ``key`` names the message (texts), ``field`` the
    input it is about."""

    def __init__(self, field: str, key: str) -> None:
        super().__init__(f"{field}: {key}")
        self.field = field
        self.key = key


@dataclass(frozen=True)
class ListFilter:
    """What GET /cabinet/transactions asks for; every part optional, combined with AND.

    ``text`` keeps the inputs as typed (trimmed): the form shows them again and the
    pager's links carry them on.
    """

    text: dict[str, str] = field(default_factory=dict)
    status: str = ""
    invoice: str = ""
    account: str = ""
    since: datetime | None = None  # created_at >= since (the "from" day, 00:00 UTC)
    until: datetime | None = None  # created_at < until (the day after "to", 00:00 UTC)
    amount_min: Decimal | None = None
    amount_max: Decimal | None = None
    card_first6: str = ""
    card_last4: str = ""
    limit: int = PAGE_SIZE
    before: tuple[datetime, str] | None = None

    @property
    def active(self) -> bool:
        return any(self.text.get(name) for name in FILTER_FIELDS)

    def query(self, **change: str) -> str:
        values = {name: self.text.get(name, "") for name in FILTER_FIELDS}
        if self.limit != PAGE_SIZE:
            values["limit"] = str(self.limit)
        values |= change
        return urlencode({k: v for k, v in values.items() if v})


def _day(name: str, raw: str) -> date | None:
    if not raw:
        return None
    if not _DATE.fullmatch(raw):
        raise FilterError(name, "cab_bad_date")
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise FilterError(name, "cab_bad_date") from None


def _money(name: str, raw: str) -> Decimal | None:
    if not raw:
        return None
    cleaned = raw.replace(",", ".").replace("\u00a0", "").replace(" ", "")
    try:
        return fields.amount(cleaned, allow_zero=True)
    except fields.FieldError:
        raise FilterError(name, "cab_bad_filter_amount") from None


def card_digits(raw: str) -> tuple[str, str]:
    """(first six, last four) from what the user typed: ``440563`` (first six),
    ``5096`` (last four), ``4405635096`` or a mask such as ``440563...5096``,
    ``4405 63** **** 5096``, ``...5096`` or ``440563...``. Anything else, a full card
    number included, raises FilterError."""
    typed = _MASK_CHARS.sub("", raw)
    if typed.isdigit() and len(typed) in (4, 6, 10):
        if len(typed) == 4:
            return "", typed
        return typed[:6], typed[6:]
    found = re.fullmatch(r"(\d{6})?" + _HIDDEN.pattern + r"(\d{4})?", typed)
    if found is None or not (found.group(1) or found.group(2)):
        raise FilterError("card", "cab_bad_card")
    return found.group(1) or "", found.group(2) or ""


def _text(name: str, raw: str) -> str:
    if len(raw) > 100 or wire.text_problem(raw):
        raise FilterError(name, "cab_bad_text")
    return raw


def parse_filter(params: Mapping[str, str]) -> ListFilter:
    """The list's query parameters, checked: a ListFilter, or FilterError."""
    text = {name: params.get(name, "").strip()[:200] for name in FILTER_FIELDS}
    status = text["status"]
    if status and status not in STATUSES:
        raise FilterError("status", "cab_bad_status")
    start, end = _day("from", text["from"]), _day("to", text["to"])
    if start and end and start > end:
        raise FilterError("to", "cab_bad_dates")
    low, high = _money("amount_min", text["amount_min"]), _money("amount_max", text["amount_max"])
    if low is not None and high is not None and low > high:
        raise FilterError("amount_max", "cab_bad_amounts")
    first6, last4 = card_digits(text["card"]) if text["card"] else ("", "")
    try:
        limit = max(1, min(MAX_PAGE_SIZE, int(params.get("limit", PAGE_SIZE))))
    except ValueError:
        raise FilterError("limit", "cab_bad_page") from None
    before = params.get("before", "")
    cursor = _cursor(before) if before else None
    if before and cursor is None:
        raise FilterError("before", "cab_bad_page")
    return ListFilter(
        text=text,
        status=status,
        invoice=_text("invoice", text["invoice"]),
        account=_text("account", text["account"]),
        since=None if start is None else datetime.combine(start, time(), UTC),
        until=None if end is None else datetime.combine(end + timedelta(days=1), time(), UTC),
        amount_min=low,
        amount_max=high,
        card_first6=first6,
        card_last4=last4,
        limit=limit,
        before=cursor,
    )


def _cursor(value: str) -> tuple[datetime, str] | None:
    """``before=<created_at ISO>~<id>``: the last row of the page before."""
    at, sep, tx_id = value.partition("~")
    if not sep or not tx_id or len(tx_id) > 36:
        return None
    try:
        moment = datetime.fromisoformat(at)
    except ValueError:
        return None
    return (moment, tx_id) if moment.tzinfo is not None else None


def transactions_query(merchant_id: str, wanted: ListFilter) -> Select[Transaction]:
    """The statement behind one page of the list: the merchant's transactions that
    match, newest first, one more than a page (to know whether there is an older one).
    bench/cabinet_search.py times this very statement."""
    tx = Transaction
    stmt = select(tx).where(tx.merchant_id == merchant_id)
    if wanted.status:
        stmt = stmt.where(tx.status == wanted.status)
    if wanted.invoice:
        stmt = stmt.where(tx.invoice_id == wanted.invoice)
    if wanted.account:
        stmt = stmt.where(tx.account_id == wanted.account)
    if wanted.since is not None:
        stmt = stmt.where(tx.created_at >= wanted.since)
    if wanted.until is not None:
        stmt = stmt.where(tx.created_at < wanted.until)
    if wanted.amount_min is not None and wanted.amount_min == wanted.amount_max:
        stmt = stmt.where(tx.amount == wanted.amount_min)  # the index, in date order
    else:
        if wanted.amount_min is not None:
            stmt = stmt.where(tx.amount >= wanted.amount_min)
        if wanted.amount_max is not None:
            stmt = stmt.where(tx.amount <= wanted.amount_max)
    if wanted.card_first6:
        stmt = stmt.where(card_first6_of == wanted.card_first6)
    if wanted.card_last4:
        stmt = stmt.where(card_last4_of == wanted.card_last4)
    if wanted.before is not None:
        at, tx_id = wanted.before
        # The first condition alone bounds an index range; the second breaks ties.
        stmt = stmt.where(
            tx.created_at <= at, or_(tx.created_at < at, and_(tx.created_at == at, tx.id < tx_id))
        )
    return stmt.order_by(tx.created_at.desc(), tx.id.desc()).limit(wanted.limit + 1)


def _transactions(rt: Runtime, merchant_id: str, wanted: ListFilter) -> tuple[list[Any], str]:
    """One page of the merchant's transactions, and the cursor of the next (or "")."""
    with rt.db.read() as session:
        rows = list(session.scalars(transactions_query(merchant_id, wanted)))
    more = len(rows) > wanted.limit
    rows = rows[: wanted.limit]
    cursor = f"{rows[-1].created_at.isoformat()}~{rows[-1].id}" if more and rows else ""
    return rows, cursor


@router.get("/cabinet/transactions")
async def transactions(request: Request, rt: Annotated[Runtime, Depends(runtime)]) -> Response:
    who = await who_is(rt, request)
    if who is None:
        return to_login(rt, request)
    try:
        wanted = parse_filter(request.query_params)
    except FilterError as exc:
        q = request.query_params
        typed = {name: q.get(name, "").strip()[:100] for name in FILTER_FIELDS}
        if exc.field == "card" and sum(c.isdigit() for c in typed["card"]) > 10:
            typed["card"] = ""  # perhaps a whole card number: never shown again
        return page(
            rt,
            request,
            "cabinet_transactions.html",
            status_code=400,
            section="transactions",
            user=who,
            csrf=who.csrf,
            rows=[],
            wanted=ListFilter(text=typed),
            statuses=STATUSES,
            error=texts(request)[exc.key],
            bad=exc.field,
            older="",
            newest="/cabinet/transactions",
        )
    rows, cursor = await run_in_threadpool(_transactions, rt, who.merchant_id, wanted)
    return page(
        rt,
        request,
        "cabinet_transactions.html",
        section="transactions",
        user=who,
        csrf=who.csrf,
        rows=rows,
        wanted=wanted,
        statuses=STATUSES,
        error="",
        bad="",
        older=f"/cabinet/transactions?{wanted.query(before=cursor)}" if cursor else "",
        newest=f"/cabinet/transactions?{wanted.query()}" if wanted.before else "",
    )


# --- one transaction -----------------------------------------------------------------

KINDS = (actions.CHARGE, actions.CANCEL, actions.REFUND)


@dataclass(frozen=True)
class _Delivery:
    notification: Notification
    attempts: list[DeliveryAttempt]


@dataclass(frozen=True)
class _Detail:
    tx: Transaction
    events: list[TransactionEvent]
    operations: list[Operation]
    deliveries: list[_Delivery]

    @property
    def refundable(self) -> Decimal:
        tx = self.tx
        return tx.amount_charged - tx.amount_refunded - tx.amount_refund_pending

    @property
    def actions(self) -> list[str]:
        """The operations the status allows now."""
        if self.tx.status == Status.AUTH.value and self.tx.operation_lock is None:
            return [actions.CHARGE, actions.CANCEL]
        if self.tx.status == Status.CHARGE.value and self.refundable > 0:
            return [actions.REFUND]
        return []


def _clean_id(tx_id: str) -> str:
    return "" if len(tx_id) > 36 or wire.text_problem(tx_id) else tx_id


def _mine(session: Any, merchant_id: str, tx_id: str) -> Transaction | None:
    tx = session.get(Transaction, tx_id) if tx_id else None
    return tx if tx is not None and tx.merchant_id == merchant_id else None


def _detail(rt: Runtime, merchant_id: str, tx_id: str) -> _Detail | None:
    """The merchant's transaction and everything that happened to it, oldest first."""
    with rt.db.read() as session:
        tx = _mine(session, merchant_id, _clean_id(tx_id))
        if tx is None:
            return None
        events = list(
            session.scalars(
                select(TransactionEvent)
                .where(TransactionEvent.transaction_id == tx.id)
                .order_by(TransactionEvent.at, TransactionEvent.id)
            )
        )
        sent = notifications.listing(
            session, merchant_id=merchant_id, transaction_id=tx.id, limit=1000
        )
        deliveries = [
            _Delivery(n, notifications.attempts_of(session, n.id))
            for n in sorted(sent, key=lambda n: (n.created_at, n.id))
        ]
        return _Detail(tx, events, actions.history(session, tx.id), deliveries)


def _confirmation(who: Who, tx: Transaction, kind: str, amount: Decimal | None) -> str:
    """Binds a confirmation to the session, the transaction (as it is now), kind, amount."""
    shown = "" if amount is None else f"{amount:.2f}"
    return mac(who, "confirm", tx.id, tx.updated_at.isoformat(), kind, shown)


def _detail_page(
    rt: Runtime,
    request: Request,
    who: Who,
    detail: _Detail,
    *,
    status_code: int = 200,
    outcome: str = "",
    message: str = "",
    amounts: dict[str, str] | None = None,
) -> Response:
    tx = detail.tx
    defaults = {
        actions.CHARGE: f"{tx.amount:.2f}",
        actions.REFUND: f"{max(detail.refundable, Decimal(0)):.2f}",
    }
    return page(
        rt,
        request,
        "cabinet_transaction.html",
        status_code=status_code,
        section="transactions",
        user=who,
        csrf=who.csrf,
        d=detail,
        tx=tx,
        outcome=outcome,
        message=message,
        amounts=defaults | (amounts or {}),
    )


@router.get("/cabinet/transactions/{tx_id}")
async def transaction(
    tx_id: str, request: Request, rt: Annotated[Runtime, Depends(runtime)]
) -> Response:
    who = await who_is(rt, request)
    if who is None:
        return to_login(rt, request)
    detail = await run_in_threadpool(_detail, rt, who.merchant_id, tx_id)
    if detail is None:
        return not_found(rt, request, who)
    outcome, message = flash(request, who)
    return _detail_page(rt, request, who, detail, outcome=outcome, message=message)


async def _posted(
    request: Request, rt: Runtime, kind: str, tx_id: str
) -> tuple[Who, dict[str, str], _Detail] | Response:
    """The session, form and transaction of an operation POST, or the answer that
    refuses it (another site, no session, a bad CSRF token, not this merchant's)."""
    if kind not in KINDS:
        await read_form(request)
        return forbidden(rt, request)
    checked = await posted(rt, request)
    if isinstance(checked, Response):
        return checked
    who, form = checked
    detail = await run_in_threadpool(_detail, rt, who.merchant_id, tx_id)
    if detail is None:
        return not_found(rt, request, who)
    return who, form, detail


def _amount(kind: str, raw: str) -> Decimal | None:
    """The form's amount: none for a cancel; raises fields.FieldError."""
    if kind == actions.CANCEL:
        return None
    return fields.amount(raw.strip().replace(",", ".").replace("\u00a0", "").replace(" ", ""))


@router.post("/cabinet/transactions/{tx_id}/{kind}")
async def ask(
    tx_id: str, kind: str, request: Request, rt: Annotated[Runtime, Depends(runtime)]
) -> Response:
    posted = await _posted(request, rt, kind, tx_id)
    if isinstance(posted, Response):
        return posted
    who, form, detail = posted
    t = texts(request)
    if kind not in detail.actions:  # a page out of date: say so before asking
        return _detail_page(
            rt,
            request,
            who,
            detail,
            status_code=409,
            outcome="error",
            message=t["cab_not_now"].format(status=detail.tx.status),
        )
    raw = form.get("amount", "")
    try:
        amount = _amount(kind, raw)
    except fields.FieldError:
        return _detail_page(
            rt,
            request,
            who,
            detail,
            status_code=400,
            outcome="error",
            message=t["cab_bad_amount"],
            amounts={kind: raw[:32]},
        )
    tx = detail.tx
    question = t[f"cab_confirm_{kind}"].format(
        amount=amount_text(tx.amount if amount is None else amount), currency=tx.currency
    )
    return page(
        rt,
        request,
        "cabinet_confirm.html",
        user=who,
        csrf=who.csrf,
        tx=tx,
        kind=kind,
        question=question,
        amount="" if amount is None else f"{amount:.2f}",
        confirmation=_confirmation(who, tx, kind, amount),
    )


@router.post("/cabinet/transactions/{tx_id}/{kind}/confirm")
async def confirm(
    tx_id: str, kind: str, request: Request, rt: Annotated[Runtime, Depends(runtime)]
) -> Response:
    posted = await _posted(request, rt, kind, tx_id)
    if isinstance(posted, Response):
        return posted
    who, form, detail = posted
    tx = detail.tx
    t = texts(request)
    try:
        amount = _amount(kind, form.get("amount", ""))
    except fields.FieldError:
        amount = None
        valid = False
    else:
        valid = same(form.get("confirmation", ""), _confirmation(who, tx, kind, amount))
    if not valid:
        return _detail_page(
            rt,
            request,
            who,
            detail,
            status_code=400,
            outcome="error",
            message=t["cab_confirm_invalid"],
        )
    scope = actions.MerchantScope(who.merchant_id)
    try:
        outcome = await run_in_threadpool(
            lambda: actions.run(
                rt,
                scope,
                tx.id,
                kind,
                amount,
                unchanged_since=tx.updated_at,
                performed_by=who.actor,
            )
        )
    except actions.OperationRefused as exc:
        log.info("cabinet %s of %s by %s refused: %s", kind, tx.id, who.email, exc.message)
        reason = exc.ru if exc.ru and language(request)[0] != "en" else exc.message
        message = t["cab_refused"].format(reason=reason)
        return redirect(flash_url(who, f"/cabinet/transactions/{tx.id}", "error", message))
    op = outcome.operation
    log.info("cabinet %s %s of %s by %s: done", kind, op.amount, tx.id, who.email)
    message = t[f"cab_done_{kind}"].format(amount=amount_text(op.amount), currency=tx.currency)
    return redirect(flash_url(who, f"/cabinet/transactions/{tx.id}", "ok", message))
