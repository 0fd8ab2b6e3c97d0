"""The cabinet's dashboard: one UTC day of the merchant's payments at a glance.

    GET /cabinet/dashboard               today (the current UTC day)
    GET /cabinet/dashboard?day=YYYY-MM-DD  a past UTC day (a bad or future day: 400)

A payment belongs to the day it was created (``transactions.created_at``, UTC), and
its outcome is its status now:

- approved: AUTH, CHARGE, REFUND, CANCEL, VERIFIED (the acquirer approved the attempt;
  a cancel or a refund came later);
- declined: FAILED, REJECT, 3D;
- in progress: NEW (left out of the approval rate).

Approval rate = approved / (approved + declined). Volume, per currency = what
cardholders paid or had blocked: ``amount`` of AUTH payments plus ``amount_charged``
of CHARGE (partly refunded ones stay CHARGE) and REFUND (fully refunded) payments;
refunds are not subtracted but shown beside it: refund operations that succeeded
(state ``done``) during the day, whatever day their payment was made. CANCEL (the
block released) and VERIFIED (a card check) move no money and add nothing.

Every figure is counted and summed by the database (GROUP BY, on the index
``(merchant_id, created_at, id)``); amounts are integer minor units there
(tolem.db.base.Money), so the sums are exact on SQLite and PostgreSQL alike and come
back as Decimal.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from sqlalchemy import Integer, case, cast, extract, func, select, type_coerce
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from tolem import reasons
from tolem.cabinet.common import Who, page, signed_in, texts
from tolem.db.base import Money, utcnow
from tolem.operations import actions
from tolem.pages import add_texts
from tolem.payments.models import Operation, Status, Transaction
from tolem.runtime import Runtime, runtime

router = APIRouter(include_in_schema=False)

APPROVED = (Status.AUTH, Status.CHARGE, Status.REFUND, Status.CANCEL, Status.VERIFIED)
DECLINED = (Status.FAILED, Status.REJECT, Status.THREE_DS_FAILED)
_APPROVED = {s.value for s in APPROVED}
_DECLINED = {s.value for s in DECLINED}
#: How many decline reasons the page lists.
TOP_REASONS = 5
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


# --- the figures ---------------------------------------------------------------------


@dataclass(frozen=True)
class Volume:
    """One currency's line: payments in the volume and their sum, the day's refunds."""

    currency: str
    count: int = 0
    amount: Decimal = Decimal("0.00")
    refunds: int = 0
    refunded: Decimal = Decimal("0.00")


@dataclass(frozen=True)
class Decline:
    code: int
    count: int

    @property
    def text(self) -> str:
        return reasons.message(self.code)


@dataclass(frozen=True)
class Hour:
    hour: int
    approved: int
    declined: int


@dataclass(frozen=True)
class Day:
    day: date
    attempts: int
    approved: int
    declined: int
    pending: int
    volumes: list[Volume]
    declines: list[Decline]
    hours: list[Hour]

    @property
    def rate(self) -> Decimal | None:
        """Approved / (approved + declined), in per cent to 0.1; None without either."""
        decided = self.approved + self.declined
        if not decided:
            return None
        return (Decimal(100 * self.approved) / decided).quantize(Decimal("0.1"))


def _hour(session: Session) -> Any:
    """The UTC hour of ``created_at``: SQLite keeps naive UTC text, PostgreSQL a
    timestamptz (read in the session's time zone unless told UTC)."""
    if session.get_bind().dialect.name == "sqlite":
        return cast(func.strftime("%H", Transaction.created_at), Integer)
    return cast(extract("hour", func.timezone("UTC", Transaction.created_at)), Integer)


def _sum(column: Any) -> Any:
    # SUM of the minor units, read back through Money: exact Decimal on both engines
    # (None when there was nothing to add).
    return type_coerce(func.sum(column), Money())


def _money(value: Decimal | None) -> Decimal:
    return Decimal("0.00") if value is None else value


def day_figures(session: Session, merchant_id: str, day: date) -> Day:
    """The merchant's figures for one UTC day."""
    start = datetime.combine(day, time(), tzinfo=UTC)
    end = start + timedelta(days=1)
    mine = (
        Transaction.merchant_id == merchant_id,
        Transaction.created_at >= start,
        Transaction.created_at < end,
    )
    paid = case(
        (Transaction.status == Status.AUTH.value, Transaction.amount),
        (
            Transaction.status.in_([Status.CHARGE.value, Status.REFUND.value]),
            Transaction.amount_charged,
        ),
    )
    counted = (Status.AUTH.value, Status.CHARGE.value, Status.REFUND.value)
    by_status = session.execute(
        select(Transaction.status, Transaction.currency, func.count(), _sum(paid))
        .where(*mine)
        .group_by(Transaction.status, Transaction.currency)
    ).all()
    attempts = approved = declined = 0
    volume: dict[str, Volume] = {}
    for status, currency, count, amount in by_status:
        attempts += count
        approved += count if status in _APPROVED else 0
        declined += count if status in _DECLINED else 0
        if status in counted:
            was = volume.get(currency, Volume(currency))
            volume[currency] = Volume(currency, was.count + count, was.amount + _money(amount))

    refunds = session.execute(
        select(Transaction.currency, func.count(), _sum(Operation.amount))
        .join(Transaction, Transaction.id == Operation.transaction_id)
        .where(
            Transaction.merchant_id == merchant_id,
            Operation.kind == actions.REFUND,
            Operation.state == "done",
            Operation.finished_at >= start,
            Operation.finished_at < end,
        )
        .group_by(Transaction.currency)
    ).all()
    for currency, count, amount in refunds:
        was = volume.get(currency, Volume(currency))
        volume[currency] = Volume(currency, was.count, was.amount, count, _money(amount))

    top = session.execute(
        select(Transaction.reason_code, func.count().label("n"))
        .where(*mine, Transaction.status.in_(_DECLINED))
        .group_by(Transaction.reason_code)
        .order_by(func.count().desc(), Transaction.reason_code)
        .limit(TOP_REASONS)
    ).all()

    hour = _hour(session)
    per_hour: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    for at, status, count in session.execute(
        select(hour, Transaction.status, func.count())
        .where(*mine, Transaction.status.in_(_APPROVED | _DECLINED))
        .group_by(hour, Transaction.status)
    ).all():
        per_hour[int(at)][0 if status in _APPROVED else 1] += count

    return Day(
        day=day,
        attempts=attempts,
        approved=approved,
        declined=declined,
        pending=attempts - approved - declined,
        volumes=[volume[c] for c in sorted(volume)],
        declines=[Decline(code, count) for code, count in top],
        hours=[Hour(h, *per_hour.get(h, (0, 0))) for h in range(24)],
    )


# --- the chart -----------------------------------------------------------------------

#: The chart's drawing box (SVG user units); the page scales it to its width.
WIDTH, HEIGHT = 480, 200
LEFT, SLOT, TOP, BASE = 40, 18, 12, 172


@dataclass(frozen=True)
class Bar:
    hour: int
    kind: str  # approved, declined
    count: int
    x: int
    y: float
    height: float


@dataclass(frozen=True)
class Chart:
    top: int  # the count the full height stands for
    bars: list[Bar]

    @property
    def ticks(self) -> list[tuple[int, float]]:
        """Y-axis labels: 0, the top, and the middle if it is a whole number."""
        values = [0, self.top] + ([self.top // 2] if self.top % 2 == 0 and self.top > 2 else [])
        return [(v, BASE - (BASE - TOP) * v / self.top) for v in sorted(set(values))]


def chart(hours: list[Hour]) -> Chart:
    top = max([1] + [max(h.approved, h.declined) for h in hours])
    bars = []
    for h in hours:
        for offset, kind, count in ((2, "approved", h.approved), (10, "declined", h.declined)):
            if count:
                height = round((BASE - TOP) * count / top, 2)
                x = LEFT + SLOT * h.hour + offset
                bars.append(Bar(h.hour, kind, count, x, round(BASE - height, 2), height))
    return Chart(top, bars)


# --- the page ------------------------------------------------------------------------


class BadDay(ValueError):
    pass


def wanted_day(raw: str | None, today: date) -> date:
    """``?day=``: absent or empty is today; raises BadDay (key of the message)."""
    if not raw:
        return today
    if not _DAY.fullmatch(raw):
        raise BadDay("cab_dash_bad_day")
    try:
        day = date.fromisoformat(raw)
    except ValueError:
        raise BadDay("cab_dash_bad_day") from None
    if day > today:
        raise BadDay("cab_dash_future_day")
    return day


def _figures(rt: Runtime, merchant_id: str, day: date) -> Day:
    with rt.db.read() as session:
        return day_figures(session, merchant_id, day)


@router.get("/cabinet/dashboard")
async def dashboard(request: Request, rt: Annotated[Runtime, Depends(runtime)]) -> Response:
    who = await signed_in(rt, request)
    if isinstance(who, Response):
        return who
    now = utcnow()
    today = now.date()
    raw = request.query_params.get("day")
    try:
        day = wanted_day(raw, today)
    except BadDay as exc:
        message = texts(request)[str(exc)].format(value=(raw or "")[:40])
        return _page(rt, request, who, None, today, now, status_code=400, error=message)
    figures = await run_in_threadpool(_figures, rt, who.merchant_id, day)
    return _page(rt, request, who, figures, today, now)


def _page(
    rt: Runtime,
    request: Request,
    who: Who,
    figures: Day | None,
    today: date,
    now: datetime,
    *,
    status_code: int = 200,
    error: str = "",
) -> Response:
    day = figures.day if figures else today
    busiest = max(figures.hours, key=lambda h: h.approved + h.declined) if figures else None
    return page(
        rt,
        request,
        "cabinet_dashboard.html",
        status_code=status_code,
        section="dashboard",
        user=who,
        csrf=who.csrf,
        d=figures,
        error=error,
        day=day.isoformat(),
        is_today=day == today,
        as_of=now.strftime("%H:%M"),
        # No day comes before 0001-01-01 (date.min - 1 day would raise: a 500).
        previous=(day - timedelta(days=1)).isoformat() if day > date.min else "",
        following=(day + timedelta(days=1)).isoformat() if day < today else "",
        chart=chart(figures.hours) if figures else None,
        busiest=busiest,
        box={"width": WIDTH, "height": HEIGHT, "left": LEFT, "slot": SLOT, "base": BASE},
    )


add_texts(
    {
        "ru": {
            "cab_dash_title": "Сводка",
            "cab_dash_today": "Сегодня",
            "cab_dash_day_utc": "{day} — сутки по UTC (00:00–24:00 UTC)",
            "cab_dash_as_of": "данные на {time} UTC",
            "cab_dash_day": "День (UTC)",
            "cab_dash_show": "Показать",
            "cab_dash_previous": "← Предыдущий день",
            "cab_dash_next": "Следующий день →",
            "cab_dash_attempts": "Попыток оплаты",
            "cab_dash_approved": "Одобрено",
            "cab_dash_declined": "Отклонено",
            "cab_dash_pending": "В процессе",
            "cab_dash_rate": "Доля одобренных",
            "cab_dash_rate_note": "одобренные / (одобренные + отклонённые); "
            "незавершённые не учитываются",
            "cab_dash_volume": "Оборот",
            "cab_dash_volume_note": "Сумма успешных платежей дня: заблокированные (AUTH) и "
            "списанные (CHARGE, REFUND). Возвраты — проведённые в этот день.",
            "cab_dash_currency": "Валюта",
            "cab_dash_payments": "Платежей",
            "cab_dash_amount": "Сумма",
            "cab_dash_refunds": "Возвратов",
            "cab_dash_refunded": "Возвращено",
            "cab_dash_no_volume": "Успешных платежей за этот день нет.",
            "cab_dash_declines": "Основные причины отказов",
            "cab_dash_code": "Код",
            "cab_dash_reason": "Причина",
            "cab_dash_count": "Количество",
            "cab_dash_no_declines": "Отказов за этот день нет.",
            "cab_dash_chart": "Платежи по часам (UTC)",
            "cab_dash_chart_desc": "Столбчатая диаграмма по часам суток UTC: одобрено "
            "{approved}, отклонено {declined}.",
            "cab_dash_busiest": " Больше всего в {hour}:00 UTC: {count}.",
            "cab_dash_hour": "Час (UTC)",
            "cab_dash_bad_day": "Неверный день «{value}»: нужна дата в виде ГГГГ-ММ-ДД.",
            "cab_dash_future_day": "День {value} по UTC ещё не наступил.",
        },
        "en": {
            "cab_dash_title": "Dashboard",
            "cab_dash_today": "Today",
            "cab_dash_day_utc": "{day}, the UTC day (00:00–24:00 UTC)",
            "cab_dash_as_of": "as of {time} UTC",
            "cab_dash_day": "Day (UTC)",
            "cab_dash_show": "Show",
            "cab_dash_previous": "← Previous day",
            "cab_dash_next": "Next day →",
            "cab_dash_attempts": "Payment attempts",
            "cab_dash_approved": "Approved",
            "cab_dash_declined": "Declined",
            "cab_dash_pending": "In progress",
            "cab_dash_rate": "Approval rate",
            "cab_dash_rate_note": "approved / (approved + declined); "
            "payments in progress are left out",
            "cab_dash_volume": "Volume",
            "cab_dash_volume_note": "The day's successful payments: blocked (AUTH) and "
            "charged (CHARGE, REFUND). Refunds: those made this day.",
            "cab_dash_currency": "Currency",
            "cab_dash_payments": "Payments",
            "cab_dash_amount": "Amount",
            "cab_dash_refunds": "Refunds",
            "cab_dash_refunded": "Refunded",
            "cab_dash_no_volume": "No successful payments this day.",
            "cab_dash_declines": "Top decline reasons",
            "cab_dash_code": "Code",
            "cab_dash_reason": "Reason",
            "cab_dash_count": "Count",
            "cab_dash_no_declines": "No declines this day.",
            "cab_dash_chart": "Payments per hour (UTC)",
            "cab_dash_chart_desc": "Bar chart by hour of the UTC day: {approved} approved, "
            "{declined} declined.",
            "cab_dash_busiest": " Busiest hour {hour}:00 UTC: {count}.",
            "cab_dash_hour": "Hour (UTC)",
            "cab_dash_bad_day": "Bad day “{value}”: a date like YYYY-MM-DD is needed.",
            "cab_dash_future_day": "The UTC day {value} has not come yet.",
        },
    }
)
