"""Status and operations: check-status, and charge, cancel, refund of a transaction."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from tolem import fields, wire
from tolem.cabinet.models import CabinetUser
from tolem.oauth import service as oauth
from tolem.oauth.tokens import AccessToken
from tolem.operations import actions, service
from tolem.payments.models import Transaction
from tolem.runtime import Runtime, runtime

router = APIRouter(tags=["status"])


async def _read(rt: Runtime, lookup: Callable[[], service.Lookup]) -> service.Lookup:
    """A status lookup: on the event loop on SQLite, in a thread on PostgreSQL.

    A read of SQLite in WAL mode waits for no writer and takes a fraction of a
    millisecond, less than handing it to a thread and back (BENCHMARKS.md, "Third
    round"); PostgreSQL is a network round trip.
    """
    if rt.db.is_sqlite:
        return lookup()
    return await run_in_threadpool(lookup)


@router.get(
    "/check-status/payment/transaction/{invoice_id}",
    summary="The status of a payment by its invoice",
)
async def check_status(invoice_id: str, request: Request) -> Response:
    rt = runtime(request)  # not a dependency: see tolem.runtime.runtime
    token = oauth.bearer(rt.sealer, request.headers.get("authorization"))

    def lookup() -> service.Lookup:
        with rt.db.read() as session:
            # A NUL (or a lone surrogate) is no invoice, and PostgreSQL refuses it outright.
            clean = "" if wire.text_problem(invoice_id) else invoice_id[:64]
            return service.by_invoice(session, token, clean)

    found = await _read(rt, lookup)
    body: dict[str, Any] = {
        "resultCode": found.result_code,
        "resultMessage": service.RESULT_MESSAGES[found.result_code],
    }
    if found.transaction is None:
        return wire.json_response(body, status_code=400)
    return wire.json_response(body | {"transaction": transaction_body(found.transaction)})


@router.get("/operation/{invoice_id}", summary="Legacy status: a flat object, code = status")
async def legacy_status(
    invoice_id: str, request: Request, rt: Annotated[Runtime, Depends(runtime)]
) -> Response:
    """What old integrations still call (EPAY.md section 8): the transaction's fields with
    ``code`` holding the status name; the check-status rules otherwise."""
    token = oauth.bearer(rt.sealer, request.headers.get("authorization"))

    def lookup() -> service.Lookup:
        with rt.db.read() as session:
            clean = "" if wire.text_problem(invoice_id) else invoice_id[:64]
            return service.by_invoice(session, token, clean)

    found = await _read(rt, lookup)
    if found.transaction is None:
        return wire.json_response(
            {"code": found.result_code, "message": service.RESULT_MESSAGES[found.result_code]},
            status_code=400,
        )
    return wire.json_response(
        transaction_body(found.transaction) | {"code": found.transaction.status}
    )


def transaction_body(tx: Transaction) -> dict[str, Any]:
    """The status API's transaction object (EPAY.md section 8)."""
    return {
        "id": tx.id,
        "createdDate": tx.created_at.isoformat(),
        "invoiceID": tx.invoice_id,
        "amount": tx.amount,
        "amountBonus": 0,
        "payoutAmount": tx.amount_charged - tx.amount_refunded,
        "orgAmount": tx.amount,
        "currency": tx.currency,
        "terminal": tx.terminal_id,
        "terminalID": tx.terminal_id,
        "approvalCode": tx.approval_code,
        "data": tx.data,
        "accountID": tx.account_id,
        "description": tx.description,
        "language": tx.language,
        "cardMask": tx.card_mask,
        "cardType": tx.card_type,
        "issuer": tx.issuer,
        "cardID": tx.card_id,
        "reference": tx.reference,
        "reason": tx.reason,
        "reasonCode": tx.reason_code,
        "intReference": tx.int_reference,
        "secure": tx.secure,
        "secureDetails": "",
        "statusID": tx.status,
        "statusName": tx.status,
        "name": tx.payer_name,
        "email": tx.email,
        "phone": tx.phone,
        "ip": tx.ip,
        "ipCountry": "",
        "ipCity": "",
        "ipRegion": "",
        "ipDistrict": "",
        "ipLatitude": 0,
        "ipLongitude": 0,
    }


async def _operation_input(request: Request) -> tuple[Decimal | None, str]:
    """``amount`` and ``externalID`` from the query (``?amount=300``) or a JSON body."""
    raw = await request.body()
    data: dict[str, Any] = {}
    if raw.strip():
        try:
            data = wire.parse_json_object(raw)
        except wire.BodyError as exc:
            raise actions.OperationRefused(str(exc)) from exc
    q = request.query_params
    raw_amount = q.get("amount", data.get("amount"))
    external = q.get("externalID") or q.get("externalId") or data.get("externalID") or ""
    try:
        amount = None if raw_amount in (None, "") else fields.amount(raw_amount)
        external_id = fields.free_text(external, "externalID", max_length=100)
    except fields.FieldError as exc:
        raise actions.OperationRefused(str(exc)) from exc
    return amount, external_id


def _actor(rt: Runtime, token: AccessToken) -> str:
    """Who an operation records: "api" for a shop's token, "api:<email>" for a cabinet
    user's (grant_type=password); a user deleted meanwhile is refused."""
    with rt.db.read() as session:
        user = session.get(CabinetUser, token.user_id)
    if user is None:
        raise actions.OperationRefused("the token's cabinet user no longer exists")
    return f"api:{user.email}"


def _operation_route(kind: str) -> Any:
    async def operate(
        transaction_id: str, request: Request, rt: Annotated[Runtime, Depends(runtime)]
    ) -> Response:
        token = oauth.bearer(rt.sealer, request.headers.get("authorization"))
        amount, external_id = await _operation_input(request)
        clean_id = "" if wire.text_problem(transaction_id) else transaction_id
        actor = await run_in_threadpool(_actor, rt, token) if token.is_user else "api"
        outcome = await run_in_threadpool(
            lambda: actions.run(rt, token, clean_id, kind, amount, external_id, performed_by=actor)
        )
        tx = outcome.transaction
        return wire.json_response(
            {
                "code": 0,
                "message": "success",
                "id": tx.id,
                "operationId": outcome.operation.id,
                "status": tx.status,
                "amount": outcome.operation.amount,
                "amountCharged": tx.amount_charged,
                "amountRefunded": tx.amount_refunded,
                "reference": outcome.operation.reference,
            }
        )

    operate.__name__ = kind
    return operate


for _kind in (actions.CHARGE, actions.CANCEL, actions.REFUND):
    router.post(
        f"/operation/{{transaction_id}}/{_kind}",
        summary=f"{_kind.capitalize()} a transaction",
    )(_operation_route(_kind))
