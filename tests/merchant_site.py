"""A minimal shop for browser tests: checkout by cryptopay, 3-D Secure, confirm.

What a real integration does server-side, in a few lines: take a token, encrypt the
card, call cryptopay; on 3-D Secure render the document's auto-submit form; on the
TermUrl call /payment/confirm and send the browser where the gateway says.
"""

from __future__ import annotations

import html
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from tests.support import Gateway, free_port, new_invoice, payment_body, token

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


def shop_app(gw: Gateway, base: str) -> Starlette:
    tokens: dict[str, str] = {}  # transaction id -> the payment's token

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
        routes=[Route("/checkout", checkout), Route("/3dres", three_d_result, methods=["POST"])]
    )


@contextmanager
def running_shop(gw: Gateway) -> Iterator[str]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = uvicorn.Server(
        uvicorn.Config(shop_app(gw, base), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=10)
