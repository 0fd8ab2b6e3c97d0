"""The merchant cabinet: the postLink notifications and sending one again.

    GET  /cabinet/notifications                   the merchant's postLinks, newest first:
                                                  by default the ones that need attention
                                                  (pending, retrying or failed);
                                                  ?state=attention|all|pending|failed|delivered,
                                                  ?invoice=…, ?before=<cursor>, ?limit=…
    POST /cabinet/notifications/{id}/redeliver    send it again now, with a fresh retry
                                                  schedule (tolem.notifications.service)

Every query is scoped to the logged-in user's merchant: another merchant's notification
is "not found", exactly like one that does not exist. A delivered notification is not
sent again from here (the page it was shown on is out of date); the API still can.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any
from urllib.parse import parse_qsl, urlencode

from fastapi import APIRouter, Depends, Request
from sqlalchemy import and_, or_, select
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from tolem import wire
from tolem.cabinet.common import (
    Who,
    flash,
    flash_url,
    not_found,
    page,
    posted,
    redirect,
    signed_in,
    texts,
)
from tolem.db.base import utcnow
from tolem.notifications import service
from tolem.notifications.models import (
    AttemptOutcome,
    DeliveryAttempt,
    Notification,
    NotificationState,
)
from tolem.pages import add_texts
from tolem.payments.models import Transaction
from tolem.runtime import Runtime, runtime

log = logging.getLogger("tolem.cabinet")

router = APIRouter(include_in_schema=False)

PATH = "/cabinet/notifications"
#: Notifications per page, and the most a ``?limit=`` may ask for.
PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
#: The default view: what may still need the merchant's attention.
ATTENTION = "attention"
ALL = "all"
STATES = (
    ATTENTION,
    ALL,
    NotificationState.PENDING.value,
    NotificationState.FAILED.value,
    NotificationState.DELIVERED.value,
)
#: The states a "Redeliver" button is shown for.
REDELIVERABLE = (NotificationState.PENDING.value, NotificationState.FAILED.value)

add_texts(
    {
        "ru": {
            "cab_nt_title": "Уведомления (postLink)",
            "cab_nt_state": "Состояние",
            "cab_nt_attention": "Требуют внимания",
            "cab_nt_all": "Все",
            "cab_nt_pending": "ожидает отправки",
            "cab_nt_retrying": "повторяется",
            "cab_nt_failed": "не доставлено",
            "cab_nt_delivered": "доставлено",
            "cab_nt_created": "Создано (UTC)",
            "cab_nt_event": "Событие",
            "cab_nt_url": "Адрес",
            "cab_nt_attempts": "Попыток",
            "cab_nt_last": "Последний ответ или ошибка",
            "cab_nt_next": "Следующая попытка (UTC)",
            "cab_nt_redeliver": "Отправить снова",
            "cab_nt_empty": "Уведомлений нет.",
            "cab_nt_redelivered": "Уведомление будет отправлено снова в ближайшие секунды.",
            "cab_nt_already_delivered": "Это уведомление уже доставлено; страница устарела. "
            "Повторная отправка не нужна.",
            "cab_nt_sending": "Это уведомление отправляется прямо сейчас; повторная отправка "
            "не запущена. Обновите страницу через несколько секунд, чтобы увидеть ответ.",
            "cab_nt_bad_state": "Неизвестное состояние в фильтре: выберите его из списка.",
            "cab_nt_bad_invoice": "Номер заказа содержит недопустимые символы.",
            "cab_nt_bad_limit": "Параметр limit должен быть целым числом от 1 до {max}.",
            "cab_nt_bad_cursor": "Ссылка на страницу повреждена: начните с последних.",
            "cab_notification_not_found_title": "Уведомление не найдено",
            "cab_notification_not_found_text": "У вашего магазина нет такого уведомления.",
        },
        "en": {
            "cab_nt_title": "Notifications (postLink)",
            "cab_nt_state": "State",
            "cab_nt_attention": "Need attention",
            "cab_nt_all": "All",
            "cab_nt_pending": "pending",
            "cab_nt_retrying": "retrying",
            "cab_nt_failed": "failed",
            "cab_nt_delivered": "delivered",
            "cab_nt_created": "Created (UTC)",
            "cab_nt_event": "Event",
            "cab_nt_url": "URL",
            "cab_nt_attempts": "Attempts",
            "cab_nt_last": "Last answer or error",
            "cab_nt_next": "Next attempt (UTC)",
            "cab_nt_redeliver": "Redeliver",
            "cab_nt_empty": "No notifications.",
            "cab_nt_redelivered": "The notification will be sent again within seconds.",
            "cab_nt_already_delivered": "This notification has already been delivered; "
            "the page was out of date. Nothing was sent again.",
            "cab_nt_sending": "This notification is being sent right now; it was not sent "
            "again. Reload the page in a few seconds to see the answer.",
            "cab_nt_bad_state": "Unknown state in the filter: choose one from the list.",
            "cab_nt_bad_invoice": "The invoice contains characters that are not allowed.",
            "cab_nt_bad_limit": "limit must be a whole number from 1 to {max}.",
            "cab_nt_bad_cursor": "The page link is damaged: start from the newest.",
            "cab_notification_not_found_title": "Notification not found",
            "cab_notification_not_found_text": "Your shop has no such notification.",
        },
    }
)


class Redelivery(StrEnum):
    SCHEDULED = "scheduled"
    DELIVERED = "delivered"  # already: nothing done
    SENDING = "sending"  # an attempt is under way: nothing done (no second POST at once)
    MISSING = "missing"  # unknown, or another merchant's


# --- the list ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Filter:
    state: str = ATTENTION
    invoice: str = ""
    limit: int = PAGE_SIZE
    before: tuple[datetime, str] | None = None

    def query(self, **change: str) -> str:
        values = {"state": "" if self.state == ATTENTION else self.state, "invoice": self.invoice}
        if self.limit != PAGE_SIZE:
            values["limit"] = str(self.limit)
        values |= change
        return urlencode({k: v for k, v in values.items() if v})


@dataclass(frozen=True)
class _Row:
    n: Notification
    invoice: str

    @property
    def shown_state(self) -> str:
        """pending, retrying (pending after a failed attempt), failed or delivered."""
        if self.n.state == NotificationState.PENDING.value and self.n.attempts > 0:
            return "retrying"
        return self.n.state

    @property
    def redeliverable(self) -> bool:
        return self.n.state in REDELIVERABLE


def _cursor(value: str) -> tuple[datetime, str] | None:
    """``before=<created_at ISO>~<id>``: the last row of the page before; ValueError."""
    at, sep, n_id = value.partition("~")
    if not sep or not _known_id(n_id) or not n_id:
        raise ValueError(value)
    moment = datetime.fromisoformat(at)
    if moment.tzinfo is None:
        raise ValueError(value)
    return moment, n_id


def _filter(params: Any) -> tuple[_Filter, str]:
    """The filter a query asks for, and the text key of what is wrong with it ("")."""
    state = params.get("state", "") or ATTENTION
    invoice = params.get("invoice", "").strip()
    if state not in STATES:
        return _Filter(invoice=invoice[:64]), "cab_nt_bad_state"
    if len(invoice) > 64 or wire.text_problem(invoice) or not invoice.isprintable():
        return _Filter(state=state), "cab_nt_bad_invoice"
    raw_limit = params.get("limit", "")
    try:
        limit = int(raw_limit) if raw_limit else PAGE_SIZE
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_PAGE_SIZE:
        return _Filter(state=state, invoice=invoice), "cab_nt_bad_limit"
    wanted = _Filter(state, invoice, limit)
    raw_before = params.get("before", "")
    if raw_before:
        try:
            return _Filter(state, invoice, limit, _cursor(raw_before)), ""
        except ValueError:
            return wanted, "cab_nt_bad_cursor"
    return wanted, ""


def _known_id(value: str) -> bool:
    return len(value) <= 36 and wire.text_problem(value) is None


def _rows(rt: Runtime, merchant_id: str, wanted: _Filter) -> tuple[list[_Row], str]:
    """One page of the merchant's notifications, and the cursor of the next (or "")."""
    stmt = (
        select(Notification, Transaction.invoice_id)
        .join(Transaction, Transaction.id == Notification.transaction_id)
        .where(Notification.merchant_id == merchant_id, Transaction.merchant_id == merchant_id)
    )
    if wanted.state == ATTENTION:
        stmt = stmt.where(Notification.state.in_(REDELIVERABLE))
    elif wanted.state != ALL:
        stmt = stmt.where(Notification.state == wanted.state)
    if wanted.invoice:
        stmt = stmt.where(Transaction.invoice_id == wanted.invoice)
    if wanted.before is not None:
        at, n_id = wanted.before
        stmt = stmt.where(
            or_(
                Notification.created_at < at,
                and_(Notification.created_at == at, Notification.id < n_id),
            )
        )
    stmt = stmt.order_by(Notification.created_at.desc(), Notification.id.desc())
    with rt.db.read() as session:
        found = [_Row(n, invoice) for n, invoice in session.execute(stmt.limit(wanted.limit + 1))]
    more = len(found) > wanted.limit
    found = found[: wanted.limit]
    last = found[-1].n if found else None
    cursor = f"{last.created_at.isoformat()}~{last.id}" if more and last else ""
    return found, cursor


def _list_page(
    rt: Runtime,
    request: Request,
    who: Who,
    wanted: _Filter,
    *,
    rows: list[_Row],
    cursor: str = "",
    status_code: int = 200,
    outcome: str = "",
    message: str = "",
) -> Response:
    return page(
        rt,
        request,
        "cabinet_notifications.html",
        status_code=status_code,
        section="notifications",
        user=who,
        csrf=who.csrf,
        rows=rows,
        wanted=wanted,
        states=STATES,
        back=wanted.query(before=_before_of(wanted)),
        outcome=outcome,
        message=message,
        older=f"{PATH}?{wanted.query(before=cursor)}" if cursor else "",
        newest=f"{PATH}?{wanted.query()}" if wanted.before else "",
    )


def _before_of(wanted: _Filter) -> str:
    return f"{wanted.before[0].isoformat()}~{wanted.before[1]}" if wanted.before else ""


@router.get(PATH)
async def notifications(request: Request, rt: Annotated[Runtime, Depends(runtime)]) -> Response:
    who = await signed_in(rt, request)
    if isinstance(who, Response):
        return who
    wanted, problem = _filter(request.query_params)
    if problem:
        message = texts(request)[problem].format(max=MAX_PAGE_SIZE)
        return _list_page(
            rt, request, who, wanted, rows=[], status_code=400, outcome="error", message=message
        )
    rows, cursor = await run_in_threadpool(_rows, rt, who.merchant_id, wanted)
    outcome, message = flash(request, who)
    return _list_page(
        rt, request, who, wanted, rows=rows, cursor=cursor, outcome=outcome, message=message
    )


# --- sending again -------------------------------------------------------------------


def _redeliver(rt: Runtime, merchant_id: str, notification_id: str) -> Redelivery:
    """Schedule the merchant's notification now, unless it is delivered already or an
    attempt is under way; the state is read under the row's lock (the worker's claim
    takes the same lock), so a delivery or a claim that lands meanwhile counts.

    A worker's claim keeps the row pending and moves ``next_attempt_at`` past the
    attempt (its lease). Making it due now during that attempt would let a worker claim
    it again and POST the same postLink twice at once; so while the lease runs and its
    attempt is still "sending", nothing is changed (two clicks at once: the first
    schedules it, the second finds it scheduled or being sent)."""
    if not notification_id or not _known_id(notification_id):
        return Redelivery.MISSING
    with rt.db.write() as session:
        found = session.scalars(
            select(Notification)
            .where(Notification.id == notification_id, Notification.merchant_id == merchant_id)
            .with_for_update()
        ).first()
        if found is None:
            return Redelivery.MISSING
        if found.state == NotificationState.DELIVERED.value:
            return Redelivery.DELIVERED
        if found.state == NotificationState.PENDING.value and found.next_attempt_at > utcnow():
            sending = session.scalars(
                select(DeliveryAttempt.id)
                .where(
                    DeliveryAttempt.notification_id == found.id,
                    DeliveryAttempt.outcome == AttemptOutcome.SENDING.value,
                )
                .limit(1)
            ).first()
            if sending is not None:
                return Redelivery.SENDING
        if not service.redeliver(session, notification_id, merchant_id=merchant_id):
            return Redelivery.MISSING  # pragma: no cover - found under the same lock
        return Redelivery.SCHEDULED


def _back(form: dict[str, str]) -> str:
    """The list's own filter, from the form's ``back`` field (checked again)."""
    wanted, problem = _filter(dict(parse_qsl(form.get("back", ""))))
    return "" if problem else wanted.query(before=_before_of(wanted))


@router.post(PATH + "/{notification_id}/redeliver")
async def redeliver(
    notification_id: str, request: Request, rt: Annotated[Runtime, Depends(runtime)]
) -> Response:
    checked = await posted(rt, request)
    if isinstance(checked, Response):
        return checked
    who, form = checked
    done = await run_in_threadpool(_redeliver, rt, who.merchant_id, notification_id)
    if done is Redelivery.MISSING:
        return not_found(rt, request, who, error="notification_not_found")
    t = texts(request)
    if done is Redelivery.DELIVERED:
        outcome, message = "error", t["cab_nt_already_delivered"]
    elif done is Redelivery.SENDING:
        outcome, message = "error", t["cab_nt_sending"]
    else:
        log.info("cabinet redelivery of postLink %s by %s", notification_id, who.email)
        outcome, message = "ok", t["cab_nt_redelivered"]
    url = flash_url(who, PATH, outcome, message)
    back = _back(form)
    return redirect(f"{url}&{back}" if back else url)
