"""The hosted payment page over HTTP (EPAY.md section 9).

    GET  /payform/payment-api.js             halyk.pay(), showPaymentWidget(), …
    GET  /payform/?params=…[&isShortForm=true]  the card form (or what stops it)
    POST /payform/pay                        pay: then 303 to the payment's own page
    GET  /payform/3ds/{id}?k=…               send the cardholder to the issuer's ACS
    POST /payform/3ds/{id}/answer?k=…        the TermUrl: the ACS's answer, confirmed here
    GET  /payform/result/{id}?k=…            the result screen; backLink or the widget's message
    GET  /payform/success.html, /payform/?code=…   result pages of /payment/confirm

Every page escapes what it shows, runs only its own nonce's script, and may be framed
by the sites in ``TOLEM_PAYFORM_FRAME_ANCESTORS`` (the widget is an iframe in a shop).
"""

from __future__ import annotations

import json
import logging
import re
from functools import cache
from importlib.resources import files
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.responses import RedirectResponse, Response

from tolem import carddata, fields, reasons, velocity
from tolem.errors import TolemError
from tolem.merchants.models import Terminal
from tolem.pages import TEXT, lang_of, render
from tolem.payform import service
from tolem.payform.params import ParamsError, SessionExpired, decode
from tolem.payments import service as payments
from tolem.payments.models import Status, Transaction
from tolem.runtime import Runtime, runtime
from tolem.secure3d import service as secure3d
from tolem.secure3d.endpoints import form_fields

log = logging.getLogger("tolem.payform")

router = APIRouter(include_in_schema=False)

_STATIC = {
    "payform.js": "text/javascript; charset=utf-8",
    "payform.css": "text/css; charset=utf-8",
    "lz-string.min.js": "text/javascript; charset=utf-8",
}
_CARD_FIELDS = ("pan", "exp", "cvc", "name", "email", "phone")
_CODE = re.compile(r"[0-9]{1,6}")


@cache
def _static(name: str) -> bytes:
    return (files("tolem.payform") / "static" / name).read_bytes()


@router.get("/payform/payment-api.js")
def payment_api(rt: Annotated[Runtime, Depends(runtime)]) -> Response:
    """The shop's script, with this gateway's own /payform/ as the page address."""
    page_url = json.dumps(f"{rt.settings.effective_public_base_url}/payform/")
    script = _static("payment-api.js").decode().replace("__TOLEM_PAYFORM_URL__", page_url)
    body = _static("lz-string.min.js") + b"\n" + script.encode()
    return Response(
        body,
        media_type="text/javascript; charset=utf-8",
        headers={"Cache-Control": "public, max-age=300", "X-Content-Type-Options": "nosniff"},
    )


@router.get("/payform/static/{name}")
def static_file(name: str) -> Response:
    if name not in _STATIC:
        return Response("not found", status_code=404, media_type="text/plain")
    return Response(
        _static(name),
        media_type=_STATIC[name],
        headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"},
    )


# --- the card form -----------------------------------------------------------------


@router.get("/payform/")
async def payform(request: Request, rt: Annotated[Runtime, Depends(runtime)]) -> Response:
    q = request.query_params
    if "params" in q:
        flags = _Flags(short=_true(q.get("isShortForm")), auto=False)
        if any(_true(q.get(flag)) for flag in ("isTransfer", "isAFT", "isOCT")):
            lang = _language_of(q["params"])
            return _message(rt, lang, "unsupported", flags, status_code=501)
        return await run_in_threadpool(_open, rt, q["params"], flags)
    code = q.get("code") or q.get("errorCode") or ""
    lang = lang_of(q.get("language"))
    if not code:
        return _message(rt, lang, "invalid", _Flags(), detail="params: missing", status_code=400)
    # Only the reason code's own text: the query is anybody's to write, and these pages
    # are not framed by other sites (frame-ancestors 'self'), so they cannot be dressed up.
    known = _CODE.fullmatch(code) is not None
    return render(
        "result.html",
        lang=lang,
        success=False,
        invoice=q.get("invoiceID", "")[:15],
        amount="",
        code=code if known else "",
        message=reasons.message(int(code)) if known else "",
    )


@router.post("/payform/pay")
async def pay(request: Request, rt: Annotated[Runtime, Depends(runtime)]) -> Response:
    form = await request.form(max_files=0, max_fields=32)
    data = {k: v for k, v in form.multi_items() if not isinstance(v, UploadFile)}
    flags = _Flags(short=_true(str(data.get("isShortForm", ""))), auto=False)
    card = service.CardForm(**{name: str(data.get(name, ""))[:256] for name in _CARD_FIELDS})
    ip = request.client.host if request.client else ""
    return await run_in_threadpool(_pay, rt, str(data.get("params", "")), flags, card, ip)


class _Flags:
    """The page's own options, carried from page to page in its URLs."""

    def __init__(self, *, short: bool = False, auto: bool = False) -> None:
        self.short = short
        self.auto = auto

    def query(self, key: str) -> str:
        values = {"k": key}
        if self.short:
            values["short"] = "1"
        if self.auto:
            values["auto"] = "1"
        return urlencode(values)


def _open(rt: Runtime, params: str, flags: _Flags) -> Response:
    opened = _checked(rt, params, flags)
    if isinstance(opened, Response):
        return opened
    if opened.holder is not None:  # paid or in progress: show that, never a second form
        flags.auto = opened.request.auto_back_link
        return RedirectResponse(_state_url(rt, opened.holder, flags), status_code=303)
    return _form(rt, opened, params, flags)


def _pay(rt: Runtime, params: str, flags: _Flags, card: service.CardForm, ip: str) -> Response:
    opened = _checked(rt, params, flags)
    if isinstance(opened, Response):
        return opened
    flags.auto = opened.request.auto_back_link
    if opened.holder is not None:
        return RedirectResponse(_state_url(rt, opened.holder, flags), status_code=303)
    try:
        checked_card = service.read_card(card)
    except service.CardProblem as problem:
        return _form(rt, opened, params, flags, card=card, field_error=problem.field)
    try:
        tx = service.pay(rt, opened, card, checked_card, ip)
    except service.PageRefused as exc:
        error = f"{exc.code}: {exc.message}"
        if exc.code == velocity.REFUSED:  # the cardholder learns what to do, not a code
            text = TEXT[lang_of(opened.request.order.language)]["msg_velocity"]
            error = f"{text} ({error})"
        return _form(rt, opened, params, flags, card=card, error=error)
    return RedirectResponse(_state_url(rt, tx, flags), status_code=303)


def _checked(rt: Runtime, params: str, flags: _Flags) -> service.Page | Response:
    """The opened link, or the page that says why it cannot be paid."""
    lang = _language_of(params)
    try:
        return service.open_page(rt, params)
    except SessionExpired:
        return _message(rt, lang, "expired", flags, status_code=401)
    except ParamsError as exc:
        return _message(rt, lang, "invalid", flags, detail=str(exc), status_code=400)
    except service.PageRefused as exc:
        detail = f"{exc.code}: {exc.message}"
        return _message(rt, lang, "invalid", flags, detail=detail, status_code=400)


def _form(
    rt: Runtime,
    page: service.Page,
    params: str,
    flags: _Flags,
    *,
    card: service.CardForm | None = None,
    field_error: str = "",
    error: str = "",
) -> Response:
    order = page.request.order
    # Forms post here; after the payment the browser may be redirected to the shop.
    allowed = {"'self'", service.origin(order.back_link), service.origin(order.failure_back_link)}
    return render(
        "payform.html",
        lang=lang_of(order.language),
        status_code=400 if field_error or error else 200,
        form_action=" ".join(sorted(a for a in allowed if a)),
        frame_ancestors=rt.settings.payform_frame_ancestors,
        short=flags.short,
        merchant=page.terminal.name,
        description=order.description,
        verification=order.is_verification,
        amount=order.amount,
        currency=order.currency,
        invoice=order.invoice_id,
        params=params,
        # Never the card number or CVC back, nor anything that looks like a card number.
        name=_echo(card.name if card else order.name),
        email=_echo(card.email if card else order.email),
        phone=_echo(card.phone if card else order.phone),
        field_error=field_error,
        error=error,
        sandbox=rt.settings.is_sandbox or page.terminal.is_test,
    )


def _echo(value: str) -> str:
    return "" if carddata.holds_pan(value) else value


def _message(
    rt: Runtime,
    lang: str,
    kind: str,
    flags: _Flags,
    *,
    detail: str = "",
    status_code: int = 400,
) -> Response:
    text = TEXT.get(lang, TEXT["ru"])
    return render(
        "payform_message.html",
        lang=lang,
        status_code=status_code,
        form_action="'none'",
        frame_ancestors=rt.settings.payform_frame_ancestors,
        short=flags.short,
        title=text[f"{kind}_title"],
        text=text.get(f"{kind}_text", ""),
        detail=detail,
    )


def _language_of(params: str) -> str:
    """The page language from the link, even when the rest of it is unusable."""
    try:
        return lang_of(decode(params).get("language"))
    except ParamsError:
        return lang_of(None)


def _true(value: str | None) -> bool:
    return (value or "").strip().lower() in ("true", "1")


# --- a payment's own pages -----------------------------------------------------------


def _state_url(rt: Runtime, tx: Transaction, flags: _Flags) -> str:
    where = "3ds" if service.waiting_for_3ds(tx) else "result"
    return f"/payform/{where}/{tx.id}?{flags.query(service.handle(rt, tx.id))}"


def _found(rt: Runtime, request: Request, tx_id: str) -> tuple[Transaction, _Flags] | Response:
    q = request.query_params
    flags = _Flags(short=q.get("short") == "1", auto=q.get("auto") == "1")
    tx = service.find(rt, tx_id, q.get("k", ""))
    if tx is None:
        return _message(rt, lang_of(None), "not_found", flags, status_code=404)
    return tx, flags


@router.get("/payform/3ds/{tx_id}")
def three_ds(tx_id: str, request: Request, rt: Annotated[Runtime, Depends(runtime)]) -> Response:
    """Post PaReq, MD and our TermUrl to the issuer's ACS (again, after a reload)."""
    found = _found(rt, request, tx_id)
    if isinstance(found, Response):
        return found
    tx, flags = found
    if not service.waiting_for_3ds(tx):
        return RedirectResponse(_state_url(rt, tx, flags), status_code=303)
    base = rt.settings.effective_public_base_url
    term_url = f"{base}/payform/3ds/{tx.id}/answer?{flags.query(service.handle(rt, tx.id))}"
    return render(
        "autopost.html",
        lang=lang_of(tx.language),
        frame_ancestors=rt.settings.payform_frame_ancestors,
        action=tx.three_ds_action,
        fields=[("PaReq", tx.three_ds_pa_req), ("MD", tx.three_ds_md), ("TermUrl", term_url)],
    )


@router.post("/payform/3ds/{tx_id}/answer")
async def three_ds_answer(
    tx_id: str, request: Request, rt: Annotated[Runtime, Depends(runtime)]
) -> Response:
    """The TermUrl of the page's payments: confirm with the ACS's PaRes, then the result."""
    data = await form_fields(request)

    def complete() -> str:
        found = _found(rt, request, tx_id)
        if isinstance(found, Response):
            return ""
        tx, flags = found
        if service.waiting_for_3ds(tx):
            try:
                tx = secure3d.complete(rt, tx, pa_res=data.get("pares", ""), md=data.get("md", ""))
            except TolemError as exc:  # refused: the payment still waits, or expired
                log.warning("3-D Secure answer refused for %s: %s", tx.id, exc.message)
                with rt.db.read() as session:
                    tx = session.get(Transaction, tx.id) or tx
        return _result_path(rt, tx, flags)

    url = await run_in_threadpool(complete)
    if not url:
        return _message(rt, lang_of(None), "not_found", _Flags(), status_code=404)
    return RedirectResponse(url, status_code=303)


def _result_path(rt: Runtime, tx: Transaction, flags: _Flags) -> str:
    return f"/payform/result/{tx.id}?{flags.query(service.handle(rt, tx.id))}"


@router.get("/payform/result/{tx_id}")
def result(tx_id: str, request: Request, rt: Annotated[Runtime, Depends(runtime)]) -> Response:
    found = _found(rt, request, tx_id)
    if isinstance(found, Response):
        return found
    tx, flags = found
    with rt.db.read() as session:
        terminal = session.get(Terminal, tx.terminal_id)
    lang = lang_of(tx.language)
    text = TEXT.get(lang, TEXT["ru"])
    final = tx.status != Status.NEW.value
    ok = payments.succeeded(tx)
    back = service.back_url(tx) if final else ""
    if final and flags.auto and back and not flags.short:
        return RedirectResponse(back, status_code=303)  # autoBackLink: no result screen
    context: dict[str, Any] = {"kind": "ok" if ok else "failed"}
    if ok:
        verified = tx.status == Status.VERIFIED.value
        context["title"] = text["verified_title" if verified else "success_title"]
    elif final:
        context["title"] = text["error_title"]
    elif service.waiting_for_3ds(tx):
        context |= {"kind": "pending", "title": text["three_ds_title"]}
        context["three_ds_url"] = _state_url(rt, tx, flags)
    else:
        context |= {"kind": "pending", "title": text["pending_title"], "refresh": True}
        context["pending_text"] = text["pending_text"]
    return render(
        "payform_result.html",
        lang=lang,
        form_action="'none'",
        frame_ancestors=rt.settings.payform_frame_ancestors,
        short=flags.short,
        final=final,
        success=ok,
        tx=tx,
        merchant=terminal.name if terminal else "",
        reason=reasons.message(tx.reason_code),
        back_url=back,
        **context,
    )


# --- where /payment/confirm sends the cardholder ---------------------------------------


@router.get("/payform/success.html")
def success_page(request: Request) -> Response:
    q = request.query_params
    return render(
        "result.html",
        lang=lang_of(q.get("language")),
        success=True,
        invoice=q.get("invoiceID", ""),
        amount=_amount(q.get("amount")),
        currency=q.get("currency", ""),
        reference=q.get("reference", ""),
        code="",
        message="",
    )


def _amount(value: str | None) -> str:
    try:
        return str(fields.amount(value)) if value else ""
    except fields.FieldError:
        return ""
