"""Driving the 3-D Secure flow over plain HTTP, as a shop's server and a browser would."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from typing import Any

import httpx

from tests.support import Gateway, cryptopay, new_invoice, payment_body, token
from tolem.processor.cards import THREE_DS

VISA_3DS = (THREE_DS[0].pan, "1230", "123")
MASTERCARD_3DS = (THREE_DS[1].pan, "1230", "123")
VISA_3DS_THEN_484 = (THREE_DS[2].pan, "1230", "123")
TERM_URL = "https://shop.example/3ds-result"


@dataclass
class Pending:
    """A payment waiting for 3-D Secure: what cryptopay answered."""

    token: str
    invoice: str
    body: dict[str, Any]

    @property
    def id(self) -> str:
        return str(self.body["id"])

    @property
    def secure3d(self) -> dict[str, str]:
        value: dict[str, str] = self.body["secure3D"]
        return value


def start(
    gw: Gateway, client: httpx.Client, card: tuple[str, str, str] = VISA_3DS, **extra: Any
) -> Pending:
    invoice = new_invoice()
    tok = token(client, invoice=invoice)["access_token"]
    response = cryptopay(client, tok, payment_body(gw, invoice, card=card, **extra))
    assert response.status_code == 200, response.text
    return Pending(tok, invoice, response.json())


def hidden(page: str, name: str) -> str:
    match = re.search(rf'<input type="hidden" name="{name}" value="([^"]*)"', page)
    assert match, f"no hidden {name} in page:\n{page}"
    return html.unescape(match.group(1))


def acs_page(client: httpx.Client, pending: Pending, term_url: str = TERM_URL) -> str:
    s3d = pending.secure3d
    page = client.post(
        s3d["action"], data={"PaReq": s3d["paReq"], "MD": s3d["md"], "TermUrl": term_url}
    )
    assert page.status_code == 200, page.text
    return page.text


def otp(page: str) -> str:
    match = re.search(r'id="sandbox-code">(\d{6})<', page)
    assert match, page
    return match.group(1)


def answer(
    client: httpx.Client, pending: Pending, code: str | None, term_url: str = TERM_URL
) -> httpx.Response:
    """Submit the ACS form: a code, or None for the 'fail on purpose' button."""
    s3d = pending.secure3d
    form = {"PaReq": s3d["paReq"], "MD": s3d["md"], "TermUrl": term_url}
    form |= {"action": "fail"} if code is None else {"action": "confirm", "code": code}
    return client.post("/acs/pa/answer", data=form)


def pass_acs(client: httpx.Client, pending: Pending) -> tuple[str, str]:
    """Pass the challenge with the right code; the (PaRes, MD) posted to TermUrl."""
    page = acs_page(client, pending)
    posted = answer(client, pending, otp(page))
    assert posted.status_code == 200 and f'action="{TERM_URL}"' in posted.text, posted.text
    return hidden(posted.text, "PaRes"), hidden(posted.text, "MD")


def confirm(
    client: httpx.Client, tok: str, tx_id: str, pa_res: str, md: str, **headers: str
) -> httpx.Response:
    return client.post(
        "/payment/confirm",
        json={"ID": tx_id, "PaRes": pa_res, "MD": md},
        headers={"Authorization": f"Bearer {tok}", **headers},
    )
