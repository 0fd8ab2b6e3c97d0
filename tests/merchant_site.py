"""A minimal shop for browser tests: the hosted page, and checkout by cryptopay.

What a real integration does, in a few lines. Hosted page: take a token server-side
and hand it to a page that loads /payform/payment-api.js and calls halyk.pay() (or
showPaymentWidget) with the original document's payment object. Host-to-host: take a
token, encrypt the card, call cryptopay; on 3-D Secure render the document's
auto-submit form; on the TermUrl call /payment/confirm and send the browser where the
gateway says.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from tests.support import Gateway, free_port, new_invoice, payment_body, served_in_a_thread, token

# The original document's redirect form (seed-api-payment.kk.txt), values escaped.
THREE_D_FORM = """<body onload="javascript:OnLoadEvent();">
<FORM ACTION="{action}" METHOD="post" NAME="ThreeDform" target="_self">
    <input name="PaReq" type="hidden" value="{pa_req}">
    <input name="MD" type="hidden" value="{md}">
    <input name="TermUrl" type="hidden" value="{term_url}">
</FORM>
    <div align="center">
        <h1>Дождитесь ответа! <br><br>
           Жауабын күтіңіз!<br><br>
           Wait for an answer!<br><br>
        </h1>
    </div>
</body>
<SCRIPT>function OnLoadEvent () {{
     document.forms[0].submit();
}}
</SCRIPT>"""


# The shop's page for the hosted form: the payment object of the original document
# (seed-payment-page.en.txt), with this shop's links and a fresh invoice and token.
HALYK_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Shop checkout</title><link rel="icon" href="data:,">
<script src="{script}"></script></head>
<body>
<h1>Shop checkout</h1>
<button id="{button}">Pay</button>
<p id="outcome"></p>
<script>
var auth = {auth};
var createPaymentObject = function(auth, invoiceId, amount) {{
    var paymentObject = {{
        invoiceId: invoiceId,
        invoiceIdAlt: "8564546",
        backLink: {back_link},
        failureBackLink: {failure_back_link},
        postLink: "https://example.kz/",
        failurePostLink: "https://example.kz/order/1123/fail",
        language: {language},
        description: {description},
        accountId: "testuser1",
        terminal: "67e34d63-102f-4bd1-898e-370781d0074d",
        amount: amount,
        data: {data},
        currency: {currency},
        phone: "77777777777",
        email: "example@example.com"
    }};
    {extra}
    paymentObject.auth = auth;
    return paymentObject;
}};
document.getElementById("{button}").addEventListener("click", function () {{
    var payment = createPaymentObject(auth, {invoice}, {amount});
    {call}
}});
</script>
</body></html>"""

WIDGET_CALL = """halyk.showPaymentWidget(payment, function (result) {
        window.widgetResult = result;
        document.getElementById("outcome").textContent = JSON.stringify(result);
    });"""


def _js(value: object) -> str:
    """A JavaScript literal that is safe inside <script> (no "</script>" can end it)."""
    return json.dumps(value).replace("</", "<\\/")


def shop_app(gw: Gateway, base: str) -> Starlette:
    tokens: dict[str, str] = {}  # transaction id -> the payment's token

    async def halyk_page(request: Request) -> Response:
        """?mode=pay|widget|verify&language=…&description=…&auto=1"""
        q = request.query_params
        mode = q.get("mode", "pay")
        invoice = new_invoice()
        verify = mode == "verify"
        amount, currency = (0, "USD") if verify else (100, "KZT")
        with httpx.Client(base_url=gw.base_url) as client:
            auth = token(client, invoice=invoice, amount=amount, currency=currency)
        extra = []
        if verify:
            extra.append(
                'paymentObject.cardSave = true; paymentObject.paymentType = "cardVerification";'
            )
        if q.get("auto") == "1":
            extra.append("paymentObject.autoBackLink = true;")
        page = HALYK_PAGE.format(
            script=f"{gw.base_url}/payform/payment-api.js",
            button="pay-widget" if mode == "widget" else "pay",
            auth=_js(auth),
            back_link=_js(f"{base}/back/success"),
            failure_back_link=_js(f"{base}/back/failure"),
            language=_js(q.get("language", "RU")),
            description=_js(q.get("description", "Оплата в интернет магазине")),
            currency=_js(currency),
            data=_js(_js({"statement": {"name": "Arman Ali", "invoiceID": "80000016"}})),
            invoice=_js(invoice),
            amount=amount,
            extra=" ".join(extra),
            call=WIDGET_CALL
            if mode == "widget"
            else ("halyk.cardverification(payment);" if verify else "halyk.pay(payment);"),
        )
        return HTMLResponse(page)

    async def back(request: Request) -> Response:
        outcome = request.path_params["outcome"]
        return HTMLResponse(
            f"<link rel='icon' href='data:,'><h1 id='back'>{html.escape(outcome)}</h1>"
        )

    async def checkout(request: Request) -> Response:
        card = request.query_params["card"].split(",")
        language = request.query_params.get("language", "rus")
        invoice = new_invoice()
        async with httpx.AsyncClient(base_url=gw.base_url) as client:
            with httpx.Client(base_url=gw.base_url) as sync_client:
                tok = token(sync_client, invoice=invoice)["access_token"]
            body = payment_body(gw, invoice, card=(card[0], card[1], card[2]), language=language)
            answer = await client.post(
                "/payment/cryptopay", json=body, headers={"Authorization": f"Bearer {tok}"}
            )
        data = answer.json()
        if answer.status_code != 200 or not data.get("secure3D"):
            return HTMLResponse(f"<h1 id='paid'>{html.escape(answer.text)}</h1>")
        tokens[data["id"]] = tok
        s3d = data["secure3D"]
        return HTMLResponse(
            THREE_D_FORM.format(
                action=html.escape(s3d["action"]),
                pa_req=html.escape(s3d["paReq"]),
                md=html.escape(s3d["md"]),
                term_url=html.escape(f"{base}/3dres?tx={data['id']}"),
            )
        )

    async def three_d_result(request: Request) -> Response:
        form = await request.form()
        tx_id = request.query_params["tx"]
        async with httpx.AsyncClient(base_url=gw.base_url) as client:
            answer = await client.post(
                "/payment/confirm",
                json={"ID": tx_id, "PaRes": form["PaRes"], "MD": form["MD"]},
                headers={"Authorization": f"Bearer {tokens[tx_id]}"},
            )
        return RedirectResponse(answer.json()["redirectUrl"], status_code=303)

    return Starlette(
        routes=[
            Route("/checkout", checkout),
            Route("/3dres", three_d_result, methods=["POST"]),
            Route("/halyk", halyk_page),
            Route("/back/{outcome}", back),
        ]
    )


@contextmanager
def running_shop(gw: Gateway) -> Iterator[str]:
    port = free_port()
    app = shop_app(gw, f"http://127.0.0.1:{port}")
    with served_in_a_thread(app, port=port, log_level="warning", timeout=10) as base:
        yield base
