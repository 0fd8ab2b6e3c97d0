"""The hosted payment page (EPAY.md section 9) over plain HTTP, as halyk.pay() opens it.

Every test that takes ``gateway`` runs on SQLite and on PostgreSQL. The links are built
by a Python port of the live ``encodeParams`` (tests/payform_support.py); the first test
checks that port against the script the gateway serves, run in Chromium.
"""

from __future__ import annotations

import base64
import html
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.browser import chromium
from tests.payform_support import (
    BACK_LINK,
    DECLINED_484,
    FAILURE_BACK_LINK,
    OMIT,
    VISA,
    Order,
    attribute,
    element,
    encode_params,
    follow,
    location,
    open_page,
    order,
    params_of,
    payform_link,
    payment_object,
    state_url,
    submit,
    transactions,
    with_query,
)
from tests.secure3d_support import VISA_3DS, Pending, acs_page, answer, hidden, otp
from tests.support import TERMINAL, Gateway, new_invoice, query, token
from tests.test_cli import tolem
from tolem.oauth.tokens import AccessToken, TokenSealer
from tolem.pages import TEXT
from tolem.payform.lzstring import compress_to_encoded_uri_component

STATIC = Path(__file__).resolve().parent.parent / "src" / "tolem" / "payform" / "static"
CSP_NONCE = re.compile(r"script-src 'nonce-([A-Za-z0-9_-]+)';")
EXPIRED_RU = "Сессия истекла"
INVALID_RU = "Некорректный запрос на оплату"


def csp(response: httpx.Response) -> str:
    return response.headers["content-security-policy"]


def nonce_of(response: httpx.Response) -> str:
    match = CSP_NONCE.search(csp(response))
    assert match, csp(response)
    return match.group(1)


def refused(response: httpx.Response, status: int, detail: str) -> None:
    """A message page (not the form) with this status and exactly this detail line."""
    assert response.status_code == status, (response.status_code, response.text)
    assert 'id="payform"' not in response.text
    assert element(response.text, "detail") == detail
    assert element(response.text, "result") == INVALID_RU


def expired(response: httpx.Response) -> None:
    assert response.status_code == 401, (response.status_code, response.text)
    assert element(response.text, "result") == EXPIRED_RU
    assert element(response.text, "message") == TEXT["ru"]["expired_text"]
    assert 'id="payform"' not in response.text


# --- the shop's script ----------------------------------------------------------------


def test_encode_params_is_the_live_algorithm() -> None:
    obj = {
        "invoiceId": "000001",
        "description": "Оплата & co = 100%",
        "amount": 100,
        "rate": 0.5,
        "cardSave": True,
        "autoBackLink": False,
        "phone": None,
        "": "skipped",
        "auth": {"access_token": "a+b/c=", "expires_in": "7200", "scope": "webapi payment"},
    }
    assert encode_params(obj) == (
        "invoiceId=000001"
        "&description=%D0%9E%D0%BF%D0%BB%D0%B0%D1%82%D0%B0%20%26%20co%20%3D%20100%25"
        "&amount=100&rate=0.5&cardSave=true&autoBackLink=false&phone="
        "&auth=access_token%3Da%252Bb%252Fc%253D%26expires_in%3D7200%26scope%3Dwebapi%2520payment"
    )
    assert encode_params("-_.!~*'()") == "-_.!~*'()"
    assert encode_params(None) == "" and encode_params(False) == "false"


def test_payment_api_js_is_served_and_builds_the_same_links(gateway: Gateway) -> None:
    with gateway.client() as client:
        response = client.get("/payform/payment-api.js")
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/javascript; charset=utf-8"
        script = response.text
        tok = token(client, invoice=new_invoice())
    assert f'var pageUrl = "{gateway.base_url}/payform/";' in script
    assert "__TOLEM_PAYFORM_URL__" not in script
    assert script.startswith("/* lz-string 1.5.0") and "var LZString=" in script
    for name in ("pay", "showPaymentWidget", "cardverification", "p2p", "aft", "oct"):
        assert f"halyk.{name} = " in script
    obj = payment_object(tok, "000123456789", cardSave=True, name='O\'Brien "Q" ü €')
    # The served script itself, in a window whose location only records the link.
    run = """([script, obj]) => {
        const links = [];
        const fake = {location: {set href(v) { links.push(v); }}};
        new Function("window", script)(fake);
        for (const name of ["pay", "cardverification", "p2p", "aft", "oct"]) {
            fake.halyk[name](obj);
        }
        return links;
    }"""
    with chromium() as browser:
        page = browser.new_page()
        links = page.evaluate(run, [script, obj])
    base = payform_link(gateway, obj)
    assert links == [
        base,
        base,
        base + "&isTransfer=true",
        base + "&isAFT=true",
        base + "&isOCT=true",
    ]


# --- the card form ----------------------------------------------------------------------


def test_page_shows_the_order_under_a_strict_policy(gateway: Gateway) -> None:
    with gateway.client() as client:
        o = order(gateway, client)
        page = open_page(client, o.link)
    assert page.status_code == 200, page.text
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    text = page.text
    assert element(text, "merchant") == "ePay test merchant"
    assert element(text, "description") == "Оплата в интернет магазине"
    assert element(text, "amount") == "100.00"
    assert element(text, "currency") == "KZT"
    assert element(text, "invoice") == f"Номер заказа: {o.invoice}"
    assert element(text, "sandbox-note").startswith("Песочница tolem")
    assert 'id="verify-note"' not in text and 'id="form-error"' not in text
    assert attribute(text, "email", "value") == "example@example.com"
    assert attribute(text, "phone", "value") == "77777777777"
    policy = csp(page)
    nonce = nonce_of(page)
    assert policy == (
        f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
        "img-src 'self' data:; form-action 'self' https://example.kz; base-uri 'none'; "
        "frame-ancestors *"
    )
    assert "unsafe-inline" not in policy
    assert page.headers["referrer-policy"] == "no-referrer"
    assert page.headers["cache-control"] == "no-store"
    assert f'<script src="/payform/static/payform.js" nonce="{nonce}"></script>' in text
    assert re.findall(r"<script\b[^>]*>", text) == [
        f'<script src="/payform/static/payform.js" nonce="{nonce}">'
    ]


def test_page_language_follows_every_spelling(gateway: Gateway) -> None:
    expected = {
        "RU": "ru",
        "rus": "ru",
        "KZ": "kk",
        "kaz": "kk",
        "kk": "kk",
        "EN": "en",
        "eng": "en",
    }
    titles = {"ru": "Номер заказа", "kk": "Тапсырыс нөмірі", "en": "Order number"}
    with gateway.client() as client:
        o = order(gateway, client)
        for language, lang in expected.items():
            link = payform_link(gateway, o.obj | {"language": language})
            page = open_page(client, link)
            assert page.status_code == 200, page.text
            assert f'<html lang="{lang}">' in page.text, language
            assert element(page.text, "invoice") == f"{titles[lang]}: {o.invoice}"


def test_shop_text_is_escaped(gateway: Gateway) -> None:
    with gateway.client() as client:
        o = order(
            gateway,
            client,
            description="<script>alert(1)</script>",
            accountId='acc"><script>alert(2)</script>',
            name="O'Brien \"><img src=x onerror=alert(3)>",
        )
        page = open_page(client, o.link)
        assert page.status_code == 200, page.text
        assert "<script>alert" not in page.text and "<img src=x" not in page.text
        assert element(page.text, "description") == "<script>alert(1)</script>"
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
        assert attribute(page.text, "name", "value") == "O'Brien \"><img src=x onerror=alert(3)>"
        paid = follow(client, submit(client, o.params, name='A "B" <b>C</b>'))
        assert paid.status_code == 200
        assert "<script>alert" not in paid.text and "<b>C</b>" not in paid.text
    [row] = query(
        gateway.database_url,
        "SELECT account_id, payer_name FROM transactions WHERE invoice_id = :i",
        i=o.invoice,
    )
    assert tuple(row) == ('acc"><script>alert(2)</script>', 'A "B" <b>C</b>')


# --- paying -----------------------------------------------------------------------------


def test_pay_with_the_test_visa(gateway: Gateway) -> None:
    with gateway.client() as client:
        o = order(gateway, client)
        page = open_page(client, o.link)
        # What the browser posts back: the form's hidden params, where the query's
        # "+" (LZString's alphabet) arrived as a space.
        assert "+" in o.params
        form_params = hidden(page.text, "params")
        assert form_params == o.params.replace("+", " ")
        posted = submit(client, form_params)
        kind, tx_id, q = state_url(posted)
        assert kind == "result" and set(q) == {"k"}
        result = follow(client, posted)
    assert result.status_code == 200, result.text
    [(row_id, status, code, _charged, _card, reference)] = transactions(gateway, o.invoice)
    assert (row_id, status, code) == (tx_id, "AUTH", 0)
    assert re.fullmatch(r"[0-9]{12}", reference)
    text = result.text
    assert element(text, "result") == "Оплата прошла успешно"
    assert 'class="result ok"' in text
    assert element(text, "reference") == reference
    assert element(text, "invoice") == o.invoice
    assert element(text, "amount") == "100.00 KZT"
    assert element(text, "card") == "440563...5096"
    assert attribute(text, "back", "href") == with_query(
        BACK_LINK, invoiceId=o.invoice, status="AUTH", reference=reference
    )
    assert 'id="reason"' not in text and 'id="close"' not in text


def test_declined_card_shows_the_reason_and_the_failure_link(gateway: Gateway) -> None:
    with gateway.client() as client:
        o = order(gateway, client)
        result = follow(client, submit(client, o.params, DECLINED_484))
        plain = order(gateway, client, failureBackLink=OMIT)
        fallback = follow(client, submit(client, plain.params, DECLINED_484))
    assert result.status_code == 200, result.text
    assert element(result.text, "result") == "Оплата не прошла"
    assert element(result.text, "reason") == "484: Insufficient funds"
    assert attribute(result.text, "back", "href") == with_query(
        FAILURE_BACK_LINK, invoiceId=o.invoice, status="FAILED", code="484"
    )
    assert [tuple(r)[1:3] for r in transactions(gateway, o.invoice)] == [("FAILED", 484)]
    # No failureBackLink: the failure goes to backLink.
    assert attribute(fallback.text, "back", "href") == with_query(
        BACK_LINK, invoiceId=plain.invoice, status="FAILED", code="484"
    )


def test_a_declined_order_may_be_paid_again_from_the_same_page(gateway: Gateway) -> None:
    with gateway.client() as client:
        o = order(gateway, client)
        first = state_url(submit(client, o.params, DECLINED_484))
        again = open_page(client, o.link)  # the invoice is free again: the form
        assert again.status_code == 200 and 'id="payform"' in again.text
        second = state_url(submit(client, o.params))
    assert first[1] != second[1]
    statuses = [tuple(r)[:2] for r in transactions(gateway, o.invoice)]
    assert statuses == [(first[1], "FAILED"), (second[1], "AUTH")]


def test_auto_back_link_skips_the_result_screen(gateway: Gateway) -> None:
    with gateway.client() as client:
        ok = order(gateway, client, autoBackLink=True)
        posted = submit(client, ok.params)
        assert state_url(posted)[2]["auto"] == "1"
        back = follow(client, posted)
        [row] = transactions(gateway, ok.invoice)
        assert location(back) == with_query(
            BACK_LINK, invoiceId=ok.invoice, status="AUTH", reference=row[5]
        )
        bad = order(gateway, client, autoBackLink=True)
        failed = follow(client, submit(client, bad.params, DECLINED_484))
        assert location(failed) == with_query(
            FAILURE_BACK_LINK, invoiceId=bad.invoice, status="FAILED", code="484"
        )
        # Reopening the page afterwards lands on the shop too.
        reopened = open_page(client, ok.link)
        assert location(follow(client, reopened)) == location(back)


# --- never twice ------------------------------------------------------------------------


def test_second_submit_and_reload_show_the_first_payment(gateway: Gateway) -> None:
    with gateway.client() as client:
        o = order(gateway, client)
        first = submit(client, o.params)
        second = submit(client, o.params, ("5522042705066736", "01/25", "525"))
        assert location(second) == location(first)
        reopened = open_page(client, o.link)
        assert location(reopened) == location(first)
    rows = transactions(gateway, o.invoice)
    assert [tuple(r)[:2] for r in rows] == [(state_url(first)[1], "AUTH")]


def test_concurrent_submits_pay_once(gateway: Gateway) -> None:
    with gateway.client() as client:
        o = order(gateway, client)
    barrier = threading.Barrier(10)
    answers: list[httpx.Response | BaseException] = []
    lock = threading.Lock()

    def post() -> None:
        with gateway.client() as own:
            barrier.wait()
            try:
                got: httpx.Response | BaseException = submit(own, o.params)
            except BaseException as exc:  # reported below, with the rest
                got = exc
            with lock:
                answers.append(got)

    threads = [threading.Thread(target=post) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(answers) == 10
    failures = [a for a in answers if not isinstance(a, httpx.Response) or a.status_code != 303]
    assert not failures, [getattr(a, "text", a) for a in failures]
    responses = [a for a in answers if isinstance(a, httpx.Response)]
    assert len({location(r) for r in responses}) == 1
    rows = transactions(gateway, o.invoice)
    assert [tuple(r)[1] for r in rows] == ["AUTH"]
    tx_id = rows[0][0]
    assert state_url(responses[0])[1] == tx_id
    ledger = query(
        gateway.database_url,
        "SELECT kind, approved FROM simulator_ledger WHERE reference = :r",
        r=tx_id,
    )
    assert [tuple(r) for r in ledger] == [("authorize", True)]


# --- the session and the link -----------------------------------------------------------


def _sealed(gateway: Gateway, key: bytes, *, expires_at: int, invoice: str) -> str:
    [(merchant_id,)] = query(
        gateway.database_url, "SELECT merchant_id FROM terminals WHERE id = :t", t=TERMINAL
    )
    claims = AccessToken(
        merchant_id=str(merchant_id),
        terminal_id=TERMINAL,
        scope="payment",
        invoice_id=invoice,
        amount=Decimal("100"),
        currency="KZT",
        post_link="",
        failure_post_link="",
        secret_hash="",
        expires_at=expires_at,
    )
    return TokenSealer(key).seal(claims)


def _gateway_token_key(gateway: Gateway) -> bytes:
    return base64.b64decode((gateway.data_dir / "keys" / "token.key").read_text().strip())


def test_session_must_be_the_whole_live_token(gateway: Gateway) -> None:
    key = _gateway_token_key(gateway)
    with gateway.client() as client:
        o = order(gateway, client)
        good = _sealed(gateway, key, expires_at=int(time.time()) + 600, invoice=o.invoice)
        # The control: a token sealed here with the gateway's key opens the page.
        control = open_page(client, payform_link(gateway, o.obj | {"auth": {"access_token": good}}))
        assert control.status_code == 200, control.text
        access = o.token["access_token"]
        tampered = access[:-4] + ("AAAA" if access[-4:] != "AAAA" else "BBBB")
        for auth in (
            OMIT,
            None,
            "",
            access,  # the bare access_token: "expired" at once, as on the live page
            {"token_type": "Bearer"},
            o.token | {"access_token": tampered},
            o.token | {"access_token": _sealed(gateway, key, expires_at=1, invoice=o.invoice)},
            o.token
            | {
                "access_token": _sealed(
                    gateway, secrets.token_bytes(32), expires_at=2**31, invoice=o.invoice
                )
            },
        ):
            obj = payment_object(o.token, o.invoice, auth=auth)
            expired(open_page(client, payform_link(gateway, obj)))
            expired(submit(client, params_of(payform_link(gateway, obj))))
    assert transactions(gateway, o.invoice) == []


def test_unusable_params_answer_400(gateway: Gateway) -> None:
    with gateway.client() as client:
        o = order(gateway, client)
        damaged = "params: damaged link: not LZString of encodeParams"
        for params in (
            "!!!",
            o.params[: len(o.params) // 2],
            o.params + "A",
            "eyJpbnZvaWNlSWQiOiIxMjM0NTYifQ",
        ):
            refused(client.get("/payform/", params={"params": params}), 400, damaged)
            refused(submit(client, params), 400, damaged)
        missing = "params: missing: open the page with halyk.pay()"
        refused(client.get("/payform/"), 400, "params: missing")
        refused(client.get("/payform/?params="), 400, missing)
        refused(submit(client, ""), 400, missing)
        # Valid LZString of something that is not encodeParams output.
        junk = compress_to_encoded_uri_component("just some text")
        expired(client.get("/payform/", params={"params": junk}))
    assert transactions(gateway, o.invoice) == []


def test_link_must_match_the_token(gateway: Gateway) -> None:
    with gateway.client() as client:
        o = order(gateway, client)
        other = new_invoice()

        def opened(**change: Any) -> httpx.Response:
            return open_page(client, payform_link(gateway, o.obj | change))

        refused(opened(invoiceId=other), 400, f"100: the token is bound to invoice {o.invoice}")
        refused(opened(amount=150), 400, "470: the token is bound to amount 100.00")
        refused(opened(currency="USD"), 400, "100: the token is bound to currency KZT")
        refused(
            opened(backLink="javascript:alert(1)"),
            400,
            "backLink: must be an http or https URL",
        )
        refused(
            opened(failureBackLink="data:text/html,<script>alert(1)</script>"),
            400,
            "failureBackLink: must be an http or https URL",
        )
        refused(
            opened(terminal="6c1e8b4d-0000-4000-8000-000000000000"),
            400,
            "487: terminalId does not match the token's terminal",
        )
        refused(opened(amount="1e2x"), 400, "amount: must be a number")
        refused(opened(invoiceId="12"), 400, "invoiceId: must be 6 to 15 digits")
        # The same refusals on POST, and nothing paid.
        posted = submit(client, params_of(payform_link(gateway, o.obj | {"amount": 150})))
        refused(posted, 400, "470: the token is bound to amount 100.00")
    assert transactions(gateway, o.invoice) == []
    assert transactions(gateway, other) == []


def test_terminal_of_another_merchant_is_refused(gateway: Gateway) -> None:
    env_url = gateway.database_url
    created = tolem(
        "merchant", "create", "--name", "Other shop", "--json", "--database-url", env_url
    )
    assert created.returncode == 0, created.stderr
    foreign = json.loads(created.stdout)["terminalId"]
    with gateway.client() as client:
        invoice = new_invoice()
        # A token that names no terminal: the page's terminal is looked up for the client.
        tok = token(client, invoice=invoice, terminal="")
        obj = payment_object(tok, invoice, terminal=foreign)
        refused(
            open_page(client, payform_link(gateway, obj)),
            400,
            "464: terminal not found for this client",
        )
        refused(
            submit(client, params_of(payform_link(gateway, obj))),
            400,
            "464: terminal not found for this client",
        )
        unknown = payment_object(tok, invoice, terminal="6c1e8b4d-0000-4000-8000-000000000000")
        refused(
            open_page(client, payform_link(gateway, unknown)),
            400,
            "464: terminal not found for this client",
        )
        # The same token, the merchant's own terminal: the form.
        mine = open_page(client, payform_link(gateway, payment_object(tok, invoice)))
        assert mine.status_code == 200, mine.text
    assert transactions(gateway, invoice) == []


# --- card form errors -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("card", "name", "field"),
    [
        (("4405639704015097", "01/25", "815"), "ARMAN ALI", "pan"),
        (("4405639704015096", "13/25", "815"), "ARMAN ALI", "exp"),
        (("4405639704015096", "01/25", "12"), "ARMAN ALI", "cvc"),
        (VISA, "  ", "name"),
    ],
)
def test_card_form_errors_are_shown_and_nothing_is_paid(
    gateway: Gateway, card: tuple[str, str, str], name: str, field: str
) -> None:
    message = TEXT["ru"][f"msg_{field}"]
    with gateway.client() as client:
        o = order(gateway, client)
        page = submit(client, o.params, card, name=name)
    assert page.status_code == 400, page.text
    text = page.text
    assert 'id="payform"' in text
    assert element(text, f"{field}-error") == message
    assert attribute(text, field, "aria-invalid") == "true"
    others = {"pan", "exp", "cvc", "name", "email"} - {field}
    assert all(element(text, f"{other}-error") == "" for other in others)
    assert transactions(gateway, o.invoice) == []
    # Never the card number or the CVC back; the rest of the form is kept.
    pan, _exp, cvc = card
    assert pan not in text
    for input_id in ("pan", "cvc"):
        tag = re.search(rf'<input id="{input_id}"[^>]*>', text, re.S)
        assert tag and "value=" not in tag.group(0), tag
    assert f'value="{cvc}"' not in text
    assert attribute(text, "email", "value") == "payer@example.kz"
    assert hidden(text, "params") == o.params  # as posted, to post again


# --- 3-D Secure -------------------------------------------------------------------------


THREE_DS_CARD = (VISA_3DS[0], "12/30", "123")


@dataclass
class Challenge:
    """A page payment waiting for 3-D Secure, as the browser sees it."""

    order: Order
    where: str  # the payment's /payform/3ds/ page
    page: httpx.Response  # that page: the auto-post to the ACS
    term_url: str
    pending: Pending  # for the ACS helpers of tests/secure3d_support.py
    k: str


def _challenge(gateway: Gateway, client: httpx.Client) -> Challenge:
    o = order(gateway, client)
    posted = submit(client, o.params, THREE_DS_CARD)
    kind, tx_id, q = state_url(posted)
    assert kind == "3ds"
    page = follow(client, posted)
    assert page.status_code == 200, page.text
    action = re.search(r'<form method="post" action="([^"]*)" id="autopost">', page.text)
    assert action, page.text
    s3d = {
        "action": html.unescape(action.group(1)),
        "paReq": hidden(page.text, "PaReq"),
        "md": hidden(page.text, "MD"),
    }
    pending = Pending("", o.invoice, {"id": tx_id, "secure3D": s3d})
    return Challenge(o, location(posted), page, hidden(page.text, "TermUrl"), pending, q["k"])


def _term_url_of(acs_answer: httpx.Response) -> str:
    match = re.search(r'<form method="post" action="([^"]*)"', acs_answer.text)
    assert match, acs_answer.text
    return html.unescape(match.group(1))


def test_three_ds_through_the_page(gateway: Gateway) -> None:
    with gateway.client() as client:
        c = _challenge(gateway, client)
        tx_id = c.pending.id
        assert c.pending.secure3d["action"] == f"{gateway.base_url}/acs/pa"
        assert c.pending.secure3d["paReq"].startswith("eJ")
        assert c.term_url == f"{gateway.base_url}/payform/3ds/{tx_id}/answer?k={c.k}"
        nonce = nonce_of(c.page)
        assert f'<script nonce="{nonce}">document.getElementById("autopost").submit();' in (
            c.page.text
        )
        assert [tuple(r)[1] for r in transactions(gateway, c.order.invoice)] == ["NEW"]
        # While it waits, a reload and the page link both lead to the same challenge.
        assert hidden(client.get(c.where).text, "MD") == c.pending.secure3d["md"]
        assert location(open_page(client, c.order.link)) == c.where

        acs = acs_page(client, c.pending, c.term_url)
        posted = answer(client, c.pending, otp(acs), c.term_url)
        assert posted.status_code == 200, posted.text
        assert _term_url_of(posted) == c.term_url
        form = {"PaRes": hidden(posted.text, "PaRes"), "MD": hidden(posted.text, "MD")}
        done = client.post(c.term_url, data=form, follow_redirects=False)
        assert location(done) == f"/payform/result/{tx_id}?k={c.k}"
        result = follow(client, done)
        assert element(result.text, "result") == "Оплата прошла успешно"
        [row] = transactions(gateway, c.order.invoice)
        assert (row[1], row[2]) == ("AUTH", 0) and element(result.text, "reference") == row[5]
        # A reload of the 3-D Secure page afterwards: the result, no second challenge.
        assert location(client.get(c.where, follow_redirects=False)) == location(done)
        # The TermUrl replayed: the same result, nothing changes.
        replay = client.post(c.term_url, data=form, follow_redirects=False)
        assert location(replay) == location(done)
    [(secure,)] = query(
        gateway.database_url, "SELECT secure FROM transactions WHERE id = :i", i=tx_id
    )
    assert bool(secure) is True


def test_three_wrong_codes_end_in_3d_499(gateway: Gateway) -> None:
    with gateway.client() as client:
        c = _challenge(gateway, client)
        right = otp(acs_page(client, c.pending, c.term_url))
        wrong = f"{(int(right[0]) + 1) % 10}{right[1:]}"
        answer(client, c.pending, wrong, c.term_url)
        answer(client, c.pending, wrong, c.term_url)
        final = answer(client, c.pending, wrong, c.term_url)
        assert _term_url_of(final) == c.term_url
        form = {"PaRes": hidden(final.text, "PaRes"), "MD": hidden(final.text, "MD")}
        done = client.post(c.term_url, data=form, follow_redirects=False)
        assert location(done) == f"/payform/result/{c.pending.id}?k={c.k}"
        result = follow(client, done)
    assert element(result.text, "result") == "Оплата не прошла"
    assert element(result.text, "reason") == "499: 3-D Secure code wrong or not entered"
    assert attribute(result.text, "back", "href") == with_query(
        FAILURE_BACK_LINK, invoiceId=c.order.invoice, status="3D", code="499"
    )
    assert [tuple(r)[1:3] for r in transactions(gateway, c.order.invoice)] == [("3D", 499)]


# --- card verification ------------------------------------------------------------------


def _verification(gateway: Gateway, client: httpx.Client, **overrides: Any) -> Order:
    """Token with amount 0 and USD; the object of the document's card verification."""
    defaults: dict[str, Any] = {"accountId": f"verify-{secrets.token_hex(6)}"}
    return order(
        gateway,
        client,
        amount=0,
        currency="USD",
        paymentType="cardVerification",
        cardSave=True,
        **(defaults | overrides),
    )


def test_card_verification_saves_the_card_without_charging(gateway: Gateway) -> None:
    with gateway.client() as client:
        o = _verification(gateway, client)
        page = open_page(client, o.link)
        assert page.status_code == 200, page.text
        assert element(page.text, "verify-note") == TEXT["ru"]["verify_note"]
        assert 'id="amount"' not in page.text and 'id="currency"' not in page.text
        assert element(page.text, "pay") == TEXT["ru"]["verify_button"]
        result = follow(client, submit(client, o.params))
    assert element(result.text, "result") == TEXT["ru"]["verified_title"]
    assert 'id="amount"' not in result.text
    [(tx_id, status, code, charged, card_id, _ref)] = transactions(gateway, o.invoice)
    assert (status, code, Decimal(str(charged))) == ("VERIFIED", 0, Decimal("0"))
    assert attribute(result.text, "back", "href").startswith(
        f"{BACK_LINK}?invoiceId={o.invoice}&status=VERIFIED&reference="
    )
    rows = query(
        gateway.database_url,
        "SELECT id, state, card_mask, account_id, transaction_id, sealed FROM saved_cards"
        " WHERE transaction_id = :t",
        t=tx_id,
    )
    [(saved_id, state, mask, account, saved_tx, sealed)] = rows
    assert (state, mask, account, saved_tx) == (
        "active",
        "440563...5096",
        o.obj["accountId"],
        tx_id,
    )
    assert card_id == saved_id
    assert VISA[0] not in sealed and VISA[0].encode() not in base64.b64decode(sealed)
    [(amount, kind, approved)] = query(
        gateway.database_url,
        "SELECT amount, kind, approved FROM simulator_ledger WHERE reference = :r",
        r=tx_id,
    )
    assert (Decimal(str(amount)), kind, bool(approved)) == (Decimal("0"), "verify", True)


def test_declined_verification_keeps_no_card(gateway: Gateway) -> None:
    with gateway.client() as client:
        o = _verification(gateway, client)
        result = follow(client, submit(client, o.params, DECLINED_484))
    assert element(result.text, "reason") == "484: Insufficient funds"
    [(tx_id, status, code, _charged, card_id, _ref)] = transactions(gateway, o.invoice)
    assert (status, code, card_id) == ("FAILED", 484, "")
    assert (
        query(gateway.database_url, "SELECT id FROM saved_cards WHERE transaction_id = :t", t=tx_id)
        == []
    )
    assert (
        query(
            gateway.database_url,
            "SELECT id FROM saved_cards WHERE account_id = :a",
            a=o.obj["accountId"],
        )
        == []
    )


def test_verification_with_an_amount_is_refused(gateway: Gateway) -> None:
    with gateway.client() as client:
        o = order(gateway, client, paymentType="cardVerification", cardSave=True)
        refused(open_page(client, o.link), 400, "amount: a card verification has amount 0")
        refused(submit(client, o.params), 400, "amount: a card verification has amount 0")
    assert transactions(gateway, o.invoice) == []


# --- the widget and transfers -----------------------------------------------------------


def test_widget_page_reports_to_its_parent_and_never_leaves(gateway: Gateway) -> None:
    with gateway.client() as client:
        o = order(gateway, client, autoBackLink=True, flags={"isShortForm": True})
        page = open_page(client, o.link)
        assert page.status_code == 200, page.text
        assert '<main class="payform short">' in page.text
        assert '<input type="hidden" name="isShortForm" value="true">' in page.text
        posted = submit(client, o.params, short=True)
        kind, _tx_id, q = state_url(posted)
        assert kind == "result" and (q["short"], q["auto"]) == ("1", "1")
        result = follow(client, posted)
        bad = order(gateway, client, autoBackLink=True, flags={"isShortForm": True})
        failed = follow(client, submit(client, bad.params, DECLINED_484, short=True))
    for response, success in ((result, "true"), (failed, "false")):
        assert response.status_code == 200, response.text  # not a 303 to the shop
        text = response.text
        assert '<main class="payform short">' in text
        assert element(text, "close") == TEXT["ru"]["close"]
        assert 'id="back"' not in text
        nonce = nonce_of(response)
        script = re.search(rf'<script nonce="{nonce}">(.*?)</script>', text, re.S)
        assert script, text
        assert f"var message = JSON.stringify({{success: {success}}});" in script.group(1)
        assert 'window.parent.postMessage(message, "*")' in script.group(1)
        assert len(re.findall(r"<script\b", text)) == 1


@pytest.mark.parametrize("flag", ["isTransfer", "isAFT", "isOCT"])
def test_transfers_are_not_supported(gateway: Gateway, flag: str) -> None:
    with gateway.client() as client:
        o = order(gateway, client, language="eng")
        page = open_page(client, o.link + f"&{flag}=true")
    assert page.status_code == 501, page.text
    assert element(page.text, "result") == TEXT["en"]["unsupported_title"]
    assert element(page.text, "message") == TEXT["en"]["unsupported_text"]
    assert '<html lang="en">' in page.text and 'id="payform"' not in page.text


# --- a payment's own pages --------------------------------------------------------------


def test_payment_pages_need_their_own_key(gateway: Gateway) -> None:
    with gateway.client() as client:
        _kind, first, q1 = state_url(submit(client, order(gateway, client).params))
        _kind, second, q2 = state_url(submit(client, order(gateway, client).params))
        assert client.get(f"/payform/result/{first}?k={q1['k']}").status_code == 200
        unknown = "00000000-0000-4000-8000-000000000000"
        for url in (
            f"/payform/result/{first}?k={q2['k']}",  # another payment's key
            f"/payform/result/{second}?k={q1['k']}",
            f"/payform/result/{first}?k={q1['k'][:-1]}",
            f"/payform/result/{first}",
            f"/payform/result/{unknown}?k={q1['k']}",
            f"/payform/3ds/{first}?k={q2['k']}",
            f"/payform/3ds/{unknown}?k=x",
        ):
            page = client.get(url, follow_redirects=False)
            assert page.status_code == 404, (url, page.status_code)
            assert element(page.text, "result") == TEXT["ru"]["not_found_title"]
            assert "ePay test merchant" not in page.text
        answered = client.post(
            f"/payform/3ds/{first}/answer?k={q2['k']}",
            data={"PaRes": "x", "MD": "y"},
            follow_redirects=False,
        )
        assert answered.status_code == 404


# --- static files and logs --------------------------------------------------------------


def test_static_files(gateway: Gateway) -> None:
    with gateway.client() as client:
        css = client.get("/payform/static/payform.css")
        js = client.get("/payform/static/payform.js")
        assert (css.status_code, css.headers["content-type"]) == (200, "text/css; charset=utf-8")
        assert (js.status_code, js.headers["content-type"]) == (
            200,
            "text/javascript; charset=utf-8",
        )
        assert css.headers["x-content-type-options"] == "nosniff"
        assert css.content == (STATIC / "payform.css").read_bytes()
        assert js.content == (STATIC / "payform.js").read_bytes()
        for path in (
            "/payform/static/..%2Fapp.py",
            "/payform/static/%2e%2e%2fapp.py",
            "/payform/static/__init__.py",
            "/payform/static/payment-api.js.map",
            "/payform/static/nothing.css",
        ):
            response = client.get(path)
            assert response.status_code == 404, path
            assert "import" not in response.text
        raw = client.send(client.build_request("GET", "/payform/static/../app.py"))
        assert raw.status_code == 404


def test_logs_hold_no_link_card_or_cvc(gateway: Gateway) -> None:
    with gateway.client() as client:
        o = order(gateway, client)
        assert open_page(client, o.link).status_code == 200
        bad = submit(client, o.params, ("4405639704015096", "01/25", "81"))
        assert bad.status_code == 400
        luhn_bad = submit(client, o.params, ("4405639704015097", "01/25", "815"))
        assert luhn_bad.status_code == 400
        follow(client, submit(client, o.params))
        declined = order(gateway, client)
        follow(client, submit(client, declined.params, DECLINED_484))
        c = _challenge(gateway, client)
    log = gateway.log_text()
    assert "GET /payform/?params=*** HTTP/1.1" in log
    assert "POST /payform/pay HTTP/1.1" in log
    for link in (o, declined, c.order):
        assert link.params not in log
        assert link.params[:32] not in log and link.params[-32:] not in log
        assert link.token["access_token"] not in log
    for pan in ("4405639704015096", "4405639704015097", "5578342710750560", THREE_DS_CARD[0]):
        assert pan not in log
    assert not re.search(r"(?i)cvc\W{0,8}(815|81|254|123)\b", log)


# --- inputs that once gave a 500 or a blocked redirect ------------------------------------


def test_a_non_ascii_key_is_404_not_500(gateway: Gateway) -> None:
    with gateway.client() as client:
        _kind, tx_id, q = state_url(submit(client, order(gateway, client).params))
        assert client.get(f"/payform/result/{tx_id}?k={q['k']}").status_code == 200
    # One connection each: after an unhandled error the server drops the connection.
    responses = []
    for method, path in (
        ("GET", f"/payform/result/{tx_id}?k=%C3%A9"),
        ("GET", f"/payform/3ds/{tx_id}?k=%C3%A9"),
        ("POST", f"/payform/3ds/{tx_id}/answer?k=%C3%A9"),
    ):
        with gateway.client() as own:
            form = {"PaRes": "x", "MD": "y"} if method == "POST" else None
            responses.append(own.request(method, path, data=form))
    assert [r.status_code for r in responses] == [404, 404, 404]


@pytest.mark.parametrize("code", ["%C2%B2", "9" * 5000])
def test_result_page_of_confirm_survives_any_code(gateway: Gateway, code: str) -> None:
    with gateway.client() as client:
        page = client.get(f"/payform/?code={code}&invoiceID=000000001")
    assert page.status_code == 200, page.text
    assert element(page.text, "invoice") == "000000001"


@pytest.mark.parametrize("field", ["name", "email", "phone"])
def test_card_form_refuses_nul_characters(gateway: Gateway, field: str) -> None:
    with gateway.client() as client:
        o = order(gateway, client)
        values = {"name": "ARMAN ALI", "email": "payer@example.kz", "phone": "+77001234567"}
        values[field] = {"name": "ARMAN\x00ALI", "email": "a\x00b@example.kz", "phone": "7\x007"}[
            field
        ]
        posted = submit(client, o.params, **values)
    assert posted.status_code == 400, posted.text
    assert transactions(gateway, o.invoice) == []


def test_idn_back_link_is_allowed_by_form_action(gateway: Gateway) -> None:
    """autoBackLink sends the form's POST on to the shop: CSP form-action must allow it."""
    back = "https://магазин.қаз/ok"
    punycode = "https://xn--80aairftm.xn--80ao21a"
    with gateway.client() as client:
        o = order(gateway, client, backLink=back, failureBackLink=OMIT, autoBackLink=True)
        page = open_page(client, o.link)
        assert page.status_code == 200, page.text
        back_to = location(follow(client, submit(client, o.params)))
    # Location carries the host percent-encoded; browsers map that to the punycode host.
    assert back_to.startswith(
        f"{quote(back, safe=':/')}?invoiceId={o.invoice}&status=AUTH&reference="
    )
    action = re.search(r"form-action ([^;]*);", csp(page))
    assert action, csp(page)
    assert action.group(1) == f"'self' {punycode}"


def test_invoice_with_a_taken_tail_is_refused(gateway: Gateway) -> None:
    with gateway.client() as client:
        first = order(gateway, client)
        assert state_url(submit(client, first.params))[0] == "result"
        twin = ("9" if first.invoice[0] != "9" else "8") + first.invoice[1:]
        tok = token(client, invoice=twin)
        link = payform_link(gateway, payment_object(tok, twin))
        detail = (
            f"100: invoice {twin} is already used on this terminal "
            "(its last six digits must be unique)"
        )
        refused(open_page(client, link), 400, detail)
        refused(submit(client, params_of(link)), 400, detail)
    assert transactions(gateway, twin) == []
