"""The delivery log over HTTP, for the token's merchant only (beyond ePay).

GET  /notifications?state=failed|pending|delivered&transactionId=…&limit=…
GET  /notifications/{id}              with every attempt
POST /notifications/{id}/redeliver    send again now, with a fresh schedule
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from tolem import wire
from tolem.errors import BadRequest, NotFound, Unauthorized
from tolem.notifications import service
from tolem.notifications.models import Notification, NotificationState
from tolem.oauth import service as oauth
from tolem.runtime import Runtime, runtime

router = APIRouter(tags=["notifications"])


def _merchant(rt: Runtime, request: Request) -> str:
    """The merchant of a service token: an invoice-bound token may sit in a customer's
    browser (the hosted page), and must not read other orders' postLinks."""
    token = oauth.bearer(rt.sealer, request.headers.get("authorization"))
    if not token.is_service:
        raise Unauthorized("the delivery log needs a service token (issued without invoiceID)")
    return token.merchant_id


def _known_id(value: str) -> bool:
    return len(value) <= 36 and wire.text_problem(value) is None


def _view(n: Notification) -> dict[str, Any]:
    return {
        "id": n.id,
        "transactionId": n.transaction_id,
        "event": n.event,
        "url": n.url,
        "state": n.state,
        "attempts": n.attempts,
        "lastStatus": n.last_status,
        "lastError": n.last_error,
        "nextAttemptAt": n.next_attempt_at if n.state == NotificationState.PENDING else None,
        "createdAt": n.created_at,
        "deliveredAt": n.delivered_at,
    }


@router.get("/notifications", summary="postLinks of your merchant and how delivery went")
async def list_notifications(
    request: Request,
    rt: Annotated[Runtime, Depends(runtime)],
    state: Annotated[NotificationState | None, Query()] = None,
    transaction_id: Annotated[str | None, Query(alias="transactionId", max_length=36)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Response:
    merchant_id = _merchant(rt, request)
    if transaction_id is not None and not _known_id(transaction_id):
        raise BadRequest("transactionId: not a transaction id", code=477)

    def read() -> list[dict[str, Any]]:
        with rt.db.read() as session:
            rows = service.listing(
                session,
                merchant_id=merchant_id,
                state=state.value if state else None,
                transaction_id=transaction_id,
                limit=limit,
            )
            return [_view(n) for n in rows]

    return wire.json_response({"notifications": await run_in_threadpool(read)})


@router.get("/notifications/{notification_id}", summary="One postLink with every attempt")
async def get_notification(
    notification_id: str, request: Request, rt: Annotated[Runtime, Depends(runtime)]
) -> Response:
    merchant_id = _merchant(rt, request)

    def read() -> dict[str, Any]:
        with rt.db.read() as session:
            found = (
                session.get(Notification, notification_id) if _known_id(notification_id) else None
            )
            if found is None or found.merchant_id != merchant_id:
                raise NotFound("notification not found")
            view = _view(found)
            view["body"] = wire.parse_json_object(found.body.encode("utf-8"))
            view["deliveries"] = [
                {
                    "number": a.number,
                    "startedAt": a.started_at,
                    "outcome": a.outcome,
                    "httpStatus": a.http_status,
                    "latencyMs": a.latency_ms,
                    "error": a.error,
                }
                for a in service.attempts_of(session, found.id)
            ]
            return view

    return wire.json_response(await run_in_threadpool(read))


@router.post("/notifications/{notification_id}/redeliver", summary="Send a postLink again")
async def redeliver(
    notification_id: str, request: Request, rt: Annotated[Runtime, Depends(runtime)]
) -> Response:
    merchant_id = _merchant(rt, request)

    def write() -> bool:
        if not _known_id(notification_id):
            return False
        with rt.db.write() as session:
            return service.redeliver(session, notification_id, merchant_id=merchant_id)

    if not await run_in_threadpool(write):
        raise NotFound("notification not found")
    return wire.json_response({"code": 0, "message": "will be sent again", "id": notification_id})
