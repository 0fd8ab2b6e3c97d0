"""The cabinet API: ``POST /operations`` (and ``/api/operations``), the live service's
search over a merchant's payments.

    Authorization: Bearer <a cabinet user's token: grant_type=password or refresh_token>
    {"paging": {"page": 1, "size": 20},
     "searchParameters": [{"name": "created_date", "method": "between",
                           "searchParameter": ["2024-01-01T00:00:00Z", "2024-02-01T00:00:00Z"]}],
     "orderParameters": [{"field": "created_date", "typeOrder": "DESC"}]}
    → {"totalCount": 123, "totalCountExact": true, "records": [{…}, …]}

``page`` is a page number counted from 1 (records ``(page-1)*size`` and on); a
``created_date`` ``between`` filter is required; every value is checked, and what is
wrong is answered with 400 and a message that names it. The query is built from
whitelisted columns and bound parameters only, and is always scoped to the token's
merchant. See docs/cabinet.md, "Cabinet API".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request
from sqlalchemy import ColumnElement, false, func, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import KeyedColumnElement
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from tolem import wire
from tolem.cabinet.models import CabinetUser
from tolem.errors import FORMAT_ERROR, BadRequest, TolemError, Unauthorized
from tolem.merchants.models import Merchant
from tolem.oauth import service as oauth
from tolem.oauth.tokens import AccessToken
from tolem.payments.models import Operation, Status, Transaction
from tolem.runtime import Runtime, runtime

router = APIRouter(tags=["cabinet"])

MAX_SIZE = 1000
DEFAULT_SIZE = 20
MAX_PAGE = 1_000_000
#: totalCount counts at most this many (one bounded COUNT); beyond it the answer says
#: ``"totalCountExact": false``.
COUNT_CAP = 100_000
#: Paging reaches the first this many records of a search: an OFFSET makes the database
#: walk every skipped row, so a deeper page is refused; a narrower created_date range
#: reaches the rest.
MAX_OFFSET = COUNT_CAP
MAX_FILTERS = 50
MAX_IN_VALUES = 100
MAX_TEXT = 200
MAX_AMOUNT = Decimal(10) ** 12

STATUSES = {status.value.upper(): status.value for status in Status}


class Forbidden(TolemError):
    status_code = 403


def _bad(message: str) -> BadRequest:
    return BadRequest(message, code=FORMAT_ERROR)


# --- fields and methods --------------------------------------------------------------

DATE, MONEY, TEXT, STATUS, BOOL, SHOP = "date", "money", "text", "status", "bool", "shop"
COMPARE = ("=", "<", ">", "<=", ">=")
METHODS: dict[str, tuple[str, ...]] = {
    DATE: ("between", *COMPARE),
    MONEY: ("between", "in", *COMPARE),
    TEXT: ("=", "in", "like"),
    STATUS: ("=", "in"),
    BOOL: ("=",),
    SHOP: ("=", "in"),
}


def _refund_date() -> Any:
    """When the transaction was last refunded (a done refund operation), or NULL."""
    return (
        select(func.max(Operation.finished_at))
        .where(
            Operation.transaction_id == Transaction.id,
            Operation.kind == "refund",
            Operation.state == "done",
        )
        .correlate(Transaction)
        .scalar_subquery()
    )


#: Filter name -> (kind, column). ``status`` and ``terminal`` are tolem's additions.
FIELDS: dict[str, tuple[str, Callable[[], Any]]] = {
    "created_date": (DATE, lambda: Transaction.created_at),
    "payout_date": (DATE, _refund_date),
    "amount": (MONEY, lambda: Transaction.amount),
    "payout_amount": (MONEY, lambda: Transaction.amount_refunded),
    "invoice_id": (TEXT, lambda: Transaction.invoice_id),
    "account_id": (TEXT, lambda: Transaction.account_id),
    "payer_phone": (TEXT, lambda: Transaction.phone),
    "payer_email": (TEXT, lambda: Transaction.email),
    "reference": (TEXT, lambda: Transaction.reference),
    "card_mask": (TEXT, lambda: Transaction.card_mask),
    "client": (TEXT, lambda: Transaction.payer_name),
    "terminal": (TEXT, lambda: Transaction.terminal_id),
    "transaction_type_id": (STATUS, lambda: Transaction.status),
    "status": (STATUS, lambda: Transaction.status),
    "post_link": (BOOL, lambda: Transaction.post_link),
    "shop_id": (SHOP, lambda: Transaction.merchant_id),
}

#: Sort field -> column; every order ends with the transaction id, so pages are stable.
SORTS: dict[str, Callable[[], Any]] = {
    "created_date": lambda: Transaction.created_at,
    "amount": lambda: Transaction.amount,
    "invoice_id": lambda: Transaction.invoice_id,
    "reference": lambda: Transaction.reference,
    "status": lambda: Transaction.status,
    "account_id": lambda: Transaction.account_id,
    "payout_amount": lambda: Transaction.amount_refunded,
    "payout_date": _refund_date,
}


# --- reading the body ----------------------------------------------------------------


def _integer(value: Any, where: str, low: int, high: int) -> int:
    if isinstance(value, bool):
        raise _bad(f"{where} must be a whole number, not {str(value).lower()}")
    number: Decimal | int
    if isinstance(value, str) and value.strip().isdecimal() and value.strip().isascii():
        number = Decimal(value.strip())  # no int(): a 10**6-digit string stays cheap
    elif isinstance(value, int | Decimal):
        number = value
    else:
        raise _bad(f"{where} must be a whole number")
    if isinstance(number, Decimal) and (
        not number.is_finite() or number != number.to_integral_value()
    ):
        raise _bad(f"{where} must be a whole number")
    if not low <= number <= high:  # compared before any conversion: 1e999999999 is cheap
        raise _bad(f"{where} must be between {low} and {high}")
    return int(number)


def _paging(raw: Any) -> tuple[int, int]:
    if raw is None:
        return 1, DEFAULT_SIZE
    if not isinstance(raw, dict):
        raise _bad('paging must be an object: {"page": 1, "size": 20}')
    unknown = sorted(set(raw) - {"page", "size"})
    if unknown:
        raise _bad(f"paging: unknown field {unknown[0]!r} (page, size)")
    page = _integer(raw.get("page", 1), "paging.page (a page number from 1)", 1, MAX_PAGE)
    size = _integer(raw.get("size", DEFAULT_SIZE), "paging.size", 1, MAX_SIZE)
    if (page - 1) * size >= MAX_OFFSET:
        raise _bad(
            f"paging: page {page} of size {size} starts past record {MAX_OFFSET}, the "
            "deepest a search pages; narrow the created_date range instead"
        )
    return page, size


def _date(value: Any, where: str) -> datetime:
    if not isinstance(value, str):
        raise _bad(f"{where}: a date is an ISO 8601 string, like 2024-01-31T00:00:00Z")
    try:
        parsed = datetime.fromisoformat(value.strip())
        # Without an offset the time is UTC.
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        raise _bad(
            f"{where}: {value[:40]!r} is not an ISO 8601 date, like 2024-01-31T00:00:00Z"
        ) from None


def _money(value: Any, where: str) -> Decimal:
    amount: Decimal | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        amount = Decimal(value)
    elif isinstance(value, Decimal):
        amount = value
    elif isinstance(value, str):
        try:
            amount = Decimal(value.strip())
        except InvalidOperation:
            amount = None
    if amount is None or not amount.is_finite():
        raise _bad(f"{where}: an amount is a number, like 100 or 99.50")
    if amount < 0 or amount >= MAX_AMOUNT:
        raise _bad(f"{where}: an amount is between 0 and {MAX_AMOUNT}")
    if amount != amount.quantize(Decimal("0.01")):
        raise _bad(f"{where}: an amount has at most two decimals")
    return amount.quantize(Decimal("0.01"))


def _text(value: Any, where: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise _bad(f"{where}: a text value is a string")
    if len(value) > MAX_TEXT:
        raise _bad(f"{where}: at most {MAX_TEXT} characters")
    return value


def _like(value: Any, where: str) -> str:
    pattern = _text(value, where)
    if "%" not in pattern:
        raise _bad(f"{where}: a like pattern contains %, like '4405%' or '%@shop.kz'")
    trailing = len(pattern) - len(pattern.rstrip("\\"))
    if trailing % 2:
        raise _bad(f"{where}: a like pattern may not end with the escape character \\")
    return pattern


def _flag(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise _bad(f"{where}: true or false")


def _status(value: Any, where: str) -> str:
    name = STATUSES.get(value.strip().upper()) if isinstance(value, str) else None
    if name is None:
        raise _bad(f"{where}: a status is one of {', '.join(STATUSES.values())}")
    return name


@dataclass(frozen=True)
class _Scope:
    merchant_id: str
    client_id: str


def _condition(item: Any, n: int, scope: _Scope) -> tuple[ColumnElement[bool], bool]:
    """One search parameter as a SQL condition; and whether it is created_date between."""
    where = f"searchParameters[{n}]"
    if not isinstance(item, dict):
        raise _bad(f'{where} must be an object: {{"name", "method", "searchParameter"}}')
    unknown = sorted(set(item) - {"name", "method", "searchParameter"})
    if unknown:
        raise _bad(f"{where}: unknown field {unknown[0]!r} (name, method, searchParameter)")
    name, method = item.get("name"), item.get("method")
    if not isinstance(name, str) or name not in FIELDS:
        raise _bad(f"{where}.name: unknown filter {str(name)[:40]!r}; known: {', '.join(FIELDS)}")
    kind, column_of = FIELDS[name]
    allowed = METHODS[kind]
    method = method.strip().lower() if isinstance(method, str) else method
    if method not in allowed:
        raise _bad(
            f"{where}.method: {str(method)[:20]!r} is not allowed for {name} "
            f"(allowed: {', '.join(allowed)})"
        )
    raw = item.get("searchParameter")
    values = raw if isinstance(raw, list) else [] if raw is None else [raw]
    where = f"{where}.searchParameter"
    count = len(values)
    if method == "between" and count != 2:
        raise _bad(f"{where}: between takes two values, got {count}")
    if method == "in" and not 1 <= count <= MAX_IN_VALUES:
        raise _bad(f"{where}: in takes 1 to {MAX_IN_VALUES} values, got {count}")
    if method not in ("between", "in") and count != 1:
        raise _bad(f"{where}: {method} takes one value, got {count}")

    column = column_of()
    parse: Callable[[Any, str], Any] = {
        DATE: _date,
        MONEY: _money,
        TEXT: _like if method == "like" else _text,
        STATUS: _status,
        BOOL: _flag,
        SHOP: _text,
    }[kind]
    parsed = [parse(value, f"{where}[{i}]") for i, value in enumerate(values)]
    if kind == BOOL:
        return (column != "") if parsed[0] else (column == ""), False
    if kind == SHOP:
        # The merchant is the token's; naming it (its id or ClientID) changes nothing,
        # naming another finds nothing.
        mine = any(value in (scope.merchant_id, scope.client_id) for value in parsed)
        return (column == scope.merchant_id) if mine else false(), False
    if method == "between":
        low, high = parsed
        if low > high:
            raise _bad(f"{where}: the first value is after the second")
        return column.between(low, high), name == "created_date"
    if method == "in":
        return column.in_(parsed), False
    if method == "like":
        # The pattern is a bound parameter; % and _ are wildcards and \ escapes them.
        # ILIKE on PostgreSQL, lower() LIKE lower() on SQLite: case-insensitive on both.
        return column.ilike(parsed[0], escape="\\"), False
    value = parsed[0]
    compare: dict[str, ColumnElement[bool]] = {
        "=": column == value,
        "<": column < value,
        ">": column > value,
        "<=": column <= value,
        ">=": column >= value,
    }
    return compare[method], False


def _order(raw: Any) -> list[Any]:
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        raise _bad(
            'orderParameters must be a list: [{"field": "created_date", "typeOrder": "DESC"}]'
        )
    if len(raw) > len(SORTS):
        raise _bad(f"orderParameters: at most {len(SORTS)} entries")
    order: list[Any] = []
    for n, item in enumerate(raw):
        where = f"orderParameters[{n}]"
        if not isinstance(item, dict):
            raise _bad(f'{where} must be an object: {{"field", "typeOrder"}}')
        unknown = sorted(set(item) - {"field", "typeOrder"})
        if unknown:
            raise _bad(f"{where}: unknown field {unknown[0]!r} (field, typeOrder)")
        field = item.get("field")
        if not isinstance(field, str) or field not in SORTS:
            raise _bad(f"{where}.field: cannot sort by {str(field)[:40]!r}; by {', '.join(SORTS)}")
        direction = item.get("typeOrder", "ASC")
        direction = direction.strip().upper() if isinstance(direction, str) else direction
        if direction not in ("ASC", "DESC"):
            raise _bad(f"{where}.typeOrder: ASC or DESC")
        column = SORTS[field]()
        ordered = column.asc() if direction == "ASC" else column.desc()
        order.append(ordered.nulls_last() if field == "payout_date" else ordered)
    if not order:
        order.append(Transaction.created_at.desc())
    order.append(Transaction.id.asc())  # unique: a stable order, pages that never overlap
    return order


@dataclass(frozen=True)
class Search:
    page: int
    size: int
    conditions: list[ColumnElement[bool]]
    order: list[Any]


def parse_search(data: dict[str, Any], scope: _Scope) -> Search:
    unknown = sorted(set(data) - {"paging", "searchParameters", "orderParameters"})
    if unknown:
        raise _bad(
            f"unknown field {unknown[0]!r}: the body has paging, searchParameters, orderParameters"
        )
    page, size = _paging(data.get("paging"))
    raw = data.get("searchParameters")
    if not isinstance(raw, list):
        raise _bad("searchParameters must be a list, with a created_date between filter")
    if len(raw) > MAX_FILTERS:
        raise _bad(f"searchParameters: at most {MAX_FILTERS} filters")
    conditions: list[ColumnElement[bool]] = []
    dated = False
    for n, item in enumerate(raw):
        condition, is_range = _condition(item, n, scope)
        conditions.append(condition)
        dated = dated or is_range
    if not dated:
        raise _bad(
            'searchParameters: a created_date filter with method "between" and two dates '
            "is required"
        )
    return Search(page, size, conditions, _order(data.get("orderParameters")))


# --- the answer ----------------------------------------------------------------------


def _money_out(value: Decimal) -> orjson.Fragment:
    """A JSON number with exactly two decimals, from the Decimal (never a float)."""
    return orjson.Fragment(f"{value.quantize(Decimal('0.01'))}".encode())


def record(tx: Transaction, refunded_at: datetime | None) -> dict[str, Any]:
    return {
        "id": tx.id,
        "invoiceId": tx.invoice_id,
        "reference": tx.reference,
        "amount": _money_out(tx.amount),
        "orgAmount": _money_out(tx.amount),
        "currency": tx.currency,
        "createdDate": tx.created_at.isoformat(),
        "payoutDate": refunded_at.isoformat() if refunded_at else None,
        "payoutAmount": _money_out(tx.amount_refunded),
        "status": tx.status,
        "cardMask": tx.card_mask,
        "cardType": tx.card_type,
        "issuer": tx.issuer,
        "approvalCode": tx.approval_code,
        "payerName": tx.payer_name,
        "payerPhone": tx.phone,
        "payerEmail": tx.email,
        "terminal": tx.terminal_id,
        "accountId": tx.account_id,
        "reasonCode": tx.reason_code,
        "reason": tx.reason,
        "secure": tx.secure,
    }


def _user_scope(session: Session, token: AccessToken) -> _Scope:
    user = session.get(CabinetUser, token.user_id)
    merchant = session.get(Merchant, token.merchant_id)
    if user is None or merchant is None or user.merchant_id != merchant.id:
        raise Unauthorized("the cabinet user of this token no longer exists")
    return _Scope(merchant.id, merchant.client_id)


def search(session: Session, token: AccessToken, data: dict[str, Any]) -> dict[str, Any]:
    scope = _user_scope(session, token)
    query = parse_search(data, scope)
    where = [Transaction.merchant_id == scope.merchant_id, *query.conditions]
    counted = session.scalar(
        select(func.count()).select_from(
            select(Transaction.id).where(*where).limit(COUNT_CAP + 1).subquery()
        )
    )
    total = int(counted or 0)
    refunded_at: KeyedColumnElement[Any] = _refund_date().label("refunded_at")
    rows = session.execute(
        select(Transaction, refunded_at)
        .where(*where)
        .order_by(*query.order)
        .limit(query.size)
        .offset((query.page - 1) * query.size)
    ).all()
    return {
        "totalCount": min(total, COUNT_CAP),
        "totalCountExact": total <= COUNT_CAP,
        "records": [record(tx, at) for tx, at in rows],
    }


def user_token(rt: Runtime, request: Request) -> AccessToken:
    """A cabinet user's token from the Authorization header: 401 without a valid one,
    403 for a client_credentials token."""
    token = oauth.bearer(rt.sealer, request.headers.get("authorization"))
    if not token.is_user:
        raise Forbidden(
            "POST /operations needs a cabinet user's token (grant_type=password on "
            "/oauth2/token); a client_credentials token is not accepted here"
        )
    return token


@router.post("/operations", summary="Search the merchant's payments (a cabinet user's token)")
async def operations(request: Request, rt: Annotated[Runtime, Depends(runtime)]) -> Response:
    token = user_token(rt, request)
    try:
        data = wire.parse_json_object(await request.body())
    except wire.BodyError as exc:
        raise _bad(str(exc)) from exc

    def run() -> dict[str, Any]:
        with rt.db.read() as session:
            return search(session, token, data)

    return wire.json_response(await run_in_threadpool(run), headers={"Cache-Control": "no-store"})
