"""3-D Secure over HTTP: /payment/confirm, the hosted TermUrl and the simulator's ACS."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.responses import RedirectResponse, Response

from tolem import fields, reasons, wire
from tolem.errors import BadRequest, TolemError
from tolem.oauth import service as oauth
from tolem.pages import lang_of, render
from tolem.payments import service as payments
from tolem.runtime import Runtime, runtime
from tolem.secure3d import service
from tolem.secure3d.codec import SealError

api = APIRouter(tags=["3-D Secure"])
pages = APIRouter(include_in_schema=False)

_CONFIRM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["ID", "PaRes", "MD"],
    "properties": {
        "ID": {"type": "string", "description": "Transaction id from cryptopay."},
        "PaRes": {"type": "string", "description": "What the ACS posted to your TermUrl."},
        "MD": {"type": "string", "description": "The MD posted with it."},
    },
}


async def form_fields(request: Request) -> dict[str, str]:
    """A JSON or form body as text fields, names lower-cased (ID, Id, id are one)."""
    raw = await request.body()
    if "json" in request.headers.get("content-type", ""):
        try:
            data: dict[str, Any] = wire.parse_json_object(raw)
        except wire.BodyError as exc:
            raise BadRequest(str(exc), code=477) from exc
    else:
        form = await request.form(max_files=0, max_fields=16)
        data = {k: v for k, v in form.multi_items() if not isinstance(v, UploadFile)}
    result: dict[str, str] = {}
    for key, value in data.items():
        if isinstance(value, str) and not wire.text_problem(value) and len(value) <= 16384:
            result.setdefault(key.lower(), value.strip())
    return result


@api.post(
    "/payment/confirm",
    summary="Complete a 3-D Secure payment with the ACS's PaRes",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _CONFIRM_SCHEMA}},
        }
    },
)
async def confirm(request: Request, rt: Annotated[Runtime, Depends(runtime)]) -> Response:
    token = oauth.bearer(rt.sealer, request.headers.get("authorization"))
    data = await form_fields(request)
    missing = [name for name in ("id", "pares", "md") if not data.get(name)]
    if missing:
        raise BadRequest(f"{', '.join(missing)}: required", code=477)

    tx = await run_in_threadpool(
        lambda: service.confirm(rt, token, tx_id=data["id"], pa_res=data["pares"], md=data["md"])
    )
    url = service.result_url(rt, tx)
    if "text/html" in request.headers.get("accept", ""):
        return render("redirect.html", lang=lang_of(tx.language), url=url)
    ok = payments.succeeded(tx)
    return wire.json_response(
        {
            "code": 0 if ok else tx.reason_code,
            "message": reasons.message(0 if ok else tx.reason_code),
            "id": tx.id,
            "invoiceID": tx.invoice_id,
            "status": tx.status,
            "reference": tx.reference,
            "approvalCode": tx.approval_code,
            "cardMask": tx.card_mask,
            "cardID": tx.card_id,
            "amount": tx.amount,
            "currency": tx.currency,
            "secure": tx.secure,
            "redirectUrl": url,
        }
    )


@api.post("/payments/cards/confirmPayment", include_in_schema=False)
async def confirm_payment_hosted(
    request: Request, rt: Annotated[Runtime, Depends(runtime)]
) -> Response:
    """The TermUrl the mobile SDK uses: ``?Access=<access_token>``; the gateway confirms."""
    data = await form_fields(request)
    access = request.query_params.get("Access") or request.query_params.get("access")

    def complete() -> str:
        try:
            token = oauth.bearer(rt.sealer, f"Bearer {access}" if access else None)
            with rt.db.read() as session:
                tx = service.find(session, token, md=data.get("md", ""))
            tx = service.confirm(
                rt, token, tx_id=tx.id, pa_res=data.get("pares", ""), md=data.get("md", "")
            )
        except TolemError as exc:
            invoice = str(exc.fields.get("invoiceId", ""))
            return service.error_url(rt, invoice, exc.code, "", key="errorCode")
        if payments.succeeded(tx):
            return service.result_url(rt, tx)
        return service.error_url(rt, tx.invoice_id, tx.reason_code, tx.language, key="errorCode")

    return RedirectResponse(await run_in_threadpool(complete), status_code=303)


# --- the simulated issuer's ACS ------------------------------------------------------


@pages.post("/acs/pa")
async def acs_page(request: Request, rt: Annotated[Runtime, Depends(runtime)]) -> Response:
    data = await form_fields(request)
    return await run_in_threadpool(_acs, rt, data, None)


@pages.post("/acs/pa/answer")
async def acs_answer(request: Request, rt: Annotated[Runtime, Depends(runtime)]) -> Response:
    data = await form_fields(request)
    return await run_in_threadpool(_acs, rt, data, data.get("action", "confirm"))


def _acs(rt: Runtime, data: dict[str, str], action: str | None) -> Response:
    try:
        term_url = fields.link(data.get("termurl"), "TermUrl")
        if not term_url:
            raise fields.FieldError("TermUrl", "is required")
        claims, acs = rt.simulator.acs_view(data.get("pareq", ""))
        if data.get("md") != acs.md:
            raise SealError("MD does not match PaReq")
    except (SealError, fields.FieldError) as exc:
        lang = lang_of(None)
        return render(
            "result.html",
            lang=lang,
            frame_ancestors=rt.settings.payform_frame_ancestors,
            status_code=400,
            success=False,
            invoice="",
            amount="",
            code=477,
            message=f"3-D Secure: {exc}",
        )
    lang = lang_of(claims.get("lang"))
    attempts_left = None
    if action is not None:
        answer = rt.simulator.acs_answer(acs.md, None if action == "fail" else data.get("code", ""))
        if answer.pa_res is not None:
            return render(
                "autopost.html",
                lang=lang,
                frame_ancestors=rt.settings.payform_frame_ancestors,
                action=term_url,
                fields=[("PaRes", answer.pa_res), ("MD", acs.md)],
            )
        attempts_left = answer.attempts_left
    return render(
        "acs.html",
        lang=lang,
        frame_ancestors=rt.settings.payform_frame_ancestors,
        merchant=claims.get("merchant", ""),
        amount=claims["amount"],
        currency=claims.get("currency", ""),
        mask=claims.get("mask", ""),
        otp=acs.otp,
        pa_req=data["pareq"],
        md=acs.md,
        term_url=term_url,
        answer_url="/acs/pa/answer",
        attempts_left=attempts_left,
    )
