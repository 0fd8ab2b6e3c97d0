"""The cabinet's dashboard (issue 8): one UTC day of a merchant's payments, counted
exactly, scoped to the merchant, with its chart; over HTTP and in real Chromium, on
SQLite and PostgreSQL."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page

from tests.browser import chromium, screenshot_path
from tests.cabinet_support import log_in, new_merchant, new_user, pay_as
from tests.support import Gateway, cryptogram, cryptopay, new_invoice, payment_body, token
from tolem.cabinet.users import SANDBOX_EMAIL, SANDBOX_PASSWORD
from tolem.processor.cards import trigger_pan

APPROVE = ("4405639704015096", "0125", "815")
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}
BAR = re.compile(r'<rect class="bar" data-hour="(\d+)" data-kind="(\w+)" data-count="(\d+)"')


def decline(code: int) -> tuple[str, str, str]:
    """The simulator's trigger card that declines with ``code``."""
    return (trigger_pan(code), "1230", "123")


def pay(
    gw: Gateway,
    client: httpx.Client,
    creds: dict[str, Any],
    amount: str,
    card: tuple[str, str, str] = APPROVE,
    currency: str = "KZT",
) -> dict[str, Any]:
    """A payment by the merchant ``creds`` names, of ``amount``; its answer."""
    invoice = new_invoice()
    tok = token(
        client,
        invoice=invoice,
        amount=amount,
        currency=currency,
        terminal=creds["terminalId"],
        client_id=creds["clientId"],
        client_secret=creds["clientSecret"],
    )
    body = payment_body(gw, invoice, amount=amount, card=card, currency=currency)
    body["cryptogram"] = cryptogram(gw, *card, terminal=creds["terminalId"])
    answer = cryptopay(client, tok["access_token"], body)
    assert answer.status_code in (200, 400), answer.text
    result: dict[str, Any] = answer.json()
    return result


def operate(
    client: httpx.Client, creds: dict[str, Any], tx_id: str, kind: str, amount: str = ""
) -> None:
    tok = token(
        client,
        terminal=creds["terminalId"],
        client_id=creds["clientId"],
        client_secret=creds["clientSecret"],
    )
    params = {"amount": amount} if amount else {}
    done = client.post(
        f"/operation/{tx_id}/{kind}",
        headers={"Authorization": f"Bearer {tok['access_token']}"},
        params=params,
    )
    assert done.status_code == 200, done.text


def user_of(gw: Gateway, creds: dict[str, Any], lang: str = "en") -> httpx.Client:
    email = new_user(gw, client_id=creds["clientId"])
    client = gw.client()
    response = log_in(client, email, "right-pass-1")
    assert response.status_code == 303, response.text
    assert client.get("/cabinet/dashboard", params={"lang": lang}).status_code == 200
    return client


@pytest.fixture
def client(gateway: Gateway) -> Iterator[httpx.Client]:
    with gateway.client() as c:
        yield c


def text_of(page: str, element_id: str) -> str:
    found = re.search(rf'id="{element_id}"[^>]*>(.*?)</', page, re.S)
    assert found is not None, element_id
    return html.unescape(found.group(1)).strip()


def rows(page: str, table: str, key: str) -> dict[str, str]:
    found = re.search(rf'<table id="{table}".*?</table>', page, re.S)
    assert found is not None, table
    return dict(re.findall(rf'<tr {key}="([^"]+)">(.*?)</tr>', found.group(0), re.S))


def cell(row: str, name: str) -> str:
    found = re.search(rf'<td class="[^"]*\b{name}\b[^"]*">(.*?)</td>', row, re.S)
    assert found is not None, (name, row)
    return html.unescape(found.group(1)).replace("\u00a0", " ").strip()


def test_the_days_figures_are_exact_and_only_the_merchants_own(
    gateway: Gateway, client: httpx.Client
) -> None:
    creds = new_merchant(gateway, name="Dash <b>shop</b>")
    hours = {datetime.now(UTC).hour}
    # Another merchant's payments the same day: counted nowhere here.
    for card in (APPROVE, decline(484), decline(1654)):
        _invoice, other = pay_as(gateway, client, card=card)
        assert other.status_code in (200, 400), other.text

    blocked = pay(gateway, client, creds, "100.50")  # stays AUTH
    charged = pay(gateway, client, creds, "250.25")
    refunded = pay(gateway, client, creds, "300.00")
    cancelled = pay(gateway, client, creds, "40.00")
    dollars = pay(gateway, client, creds, "12.34", currency="USD")
    for paid in (blocked, charged, refunded, cancelled, dollars):
        assert paid["status"] == "AUTH", paid
    operate(client, creds, charged["id"], "charge")
    operate(client, creds, refunded["id"], "charge")
    operate(client, creds, refunded["id"], "refund", "100.00")  # stays CHARGE, partly refunded
    operate(client, creds, cancelled["id"], "cancel")
    operate(client, creds, dollars["id"], "charge")
    operate(client, creds, dollars["id"], "refund")  # all of it: REFUND
    codes = [484, 484, 484, 465, 465, 521, 473, 462, 457]
    for code in codes:
        declined = pay(gateway, client, creds, "10.00", card=decline(code))
        assert declined["code"] == code, declined
    hours.add(datetime.now(UTC).hour)

    user = user_of(gateway, creds)
    page = user.get("/cabinet/dashboard")
    assert page.status_code == 200, page.text
    body = page.text
    day = datetime.now(UTC).date().isoformat()
    note = rf"{day}, the UTC day \(00:00\u201324:00 UTC\), as of \d\d:\d\d UTC"
    assert re.fullmatch(note, text_of(body, "day-note")), text_of(body, "day-note")
    # 5 approved (AUTH, CHARGE, CHARGE partly refunded, CANCEL, REFUND), 9 declined.
    assert text_of(body, "attempts") == "14"
    assert text_of(body, "approved") == "5"
    assert text_of(body, "declined") == "9"
    assert text_of(body, "pending") == "0"
    assert text_of(body, "rate").replace("\u00a0", " ") == "35.7 %"  # 5 / 14

    volume = rows(body, "volume", "data-currency")
    assert list(volume) == ["KZT", "USD"]
    kzt, usd = volume["KZT"], volume["USD"]
    # 100.50 blocked + 250.25 + 300.00 charged; the cancelled 40.00 is no volume.
    assert (cell(kzt, "count"), cell(kzt, "amount")) == ("3", "650.75")
    assert (cell(kzt, "refunds"), cell(kzt, "refunded")) == ("1", "100.00")
    assert (cell(usd, "count"), cell(usd, "amount")) == ("1", "12.34")
    assert (cell(usd, "refunds"), cell(usd, "refunded")) == ("1", "12.34")

    top = rows(body, "declines", "data-code")
    assert list(top) == ["484", "465", "457", "462", "473"]  # by count, then code; 521 out
    assert [cell(r, "count") for r in top.values()] == ["3", "2", "1", "1", "1"]
    assert cell(top["484"], "text") == "Insufficient funds"
    assert cell(top["473"], "text") == "3-D Secure authentication failed"

    bars = [(int(h), kind, int(n)) for h, kind, n in BAR.findall(body)]
    assert {h for h, _kind, _n in bars} <= hours
    assert datetime.now(UTC).hour in {h for h, _kind, _n in bars} or len(hours) > 1
    assert sum(n for _h, kind, n in bars if kind == "approved") == 5
    assert sum(n for _h, kind, n in bars if kind == "declined") == 9
    hidden = rows(body, "hours", "data-hour")
    assert sum(int(cell(r, "approved")) for r in hidden.values()) == 5
    assert sum(int(cell(r, "declined")) for r in hidden.values()) == 9
    assert '<svg class="chart" id="chart" viewBox="0 0 480 200" width="100%"' in body
    assert '<title id="chart-title">Payments per hour (UTC)' in body
    assert "5 approved, 9 declined" in text_of(body, "chart-desc")
    # The merchant's name is shown as text.
    assert "Dash &lt;b&gt;shop&lt;/b&gt;" in body and "<b>shop" not in body

    # The sandbox merchant's own dashboard does not see these.
    sandbox = gateway.client()
    assert log_in(sandbox, SANDBOX_EMAIL, SANDBOX_PASSWORD).status_code == 303
    theirs = sandbox.get("/cabinet/dashboard", params={"lang": "en"}).text
    assert "1654" in theirs and 'data-currency="USD"' not in theirs
    assert 'data-code="465"' not in theirs
    sandbox.close()
    user.close()


def test_russian_by_default_and_home_leads_here(gateway: Gateway) -> None:
    creds = new_merchant(gateway)
    email = new_user(gateway, client_id=creds["clientId"])
    with gateway.client() as user:
        assert user.get("/cabinet/dashboard").headers["location"] == "/cabinet/login"
        assert log_in(user, email, "right-pass-1").headers["location"] == "/cabinet/"
        assert user.get("/cabinet/").headers["location"] == "/cabinet/dashboard"
        page = user.get("/cabinet/dashboard")
        assert page.status_code == 200
        assert "<h1>Сводка · Сегодня</h1>" in page.text
        assert 'id="nav-dashboard" aria-current="page"' in page.text
        assert "script-src 'nonce-" in page.headers["content-security-policy"]
        # A fresh merchant's day: nothing, said so, and no bars.
        assert text_of(page.text, "attempts") == "0"
        assert text_of(page.text, "rate") == "—"
        assert "Успешных платежей за этот день нет." in page.text
        assert "Отказов за этот день нет." in page.text
        assert not BAR.findall(page.text)


def test_a_past_day_and_bad_days(gateway: Gateway, client: httpx.Client) -> None:
    creds = new_merchant(gateway)
    assert pay(gateway, client, creds, "100.00")["status"] == "AUTH"
    user = user_of(gateway, creds)
    today = datetime.now(UTC).date()
    yesterday = (today - timedelta(days=1)).isoformat()

    past = user.get("/cabinet/dashboard", params={"day": yesterday})
    assert past.status_code == 200
    assert text_of(past.text, "attempts") == "0"  # today's payment is not yesterday's
    assert f'href="/cabinet/dashboard?day={today.isoformat()}" id="next"' in past.text
    assert text_of(user.get("/cabinet/dashboard", params={"day": ""}).text, "attempts") == "1"

    for raw, message in (
        ("2026-13-01", "Bad day “2026-13-01”: a date like YYYY-MM-DD is needed."),
        ("20260101", "Bad day “20260101”: a date like YYYY-MM-DD is needed."),
        ((today + timedelta(days=1)).isoformat(), "has not come yet"),
    ):
        bad = user.get("/cabinet/dashboard", params={"day": raw})
        assert bad.status_code == 400, raw
        assert message in text_of(bad.text, "day-error")
        assert 'id="attempts"' not in bad.text

    hostile = user.get("/cabinet/dashboard", params={"day": "<script>alert(1)</script>"})
    assert hostile.status_code == 400
    assert "<script>alert" not in hostile.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in hostile.text
    user.close()


# --- in Chromium ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as b:
        yield b


def _open(browser: Browser, viewport: dict[str, int]) -> tuple[Page, list[str]]:
    page = browser.new_page(viewport=viewport)  # type: ignore[arg-type]
    problems: list[str] = []

    def console(message: ConsoleMessage) -> None:
        if message.type == "error" or "Content Security Policy" in message.text:
            problems.append(message.text)

    page.on("console", console)
    page.on("pageerror", lambda e: problems.append(str(e)))
    return page, problems


def test_the_dashboard_in_a_browser_at_desktop_and_phone_width(
    gateway: Gateway, browser: Browser, client: httpx.Client
) -> None:
    creds = new_merchant(gateway, name="Chart shop")
    email = new_user(gateway, client_id=creds["clientId"])
    for amount, card in (("100.00", APPROVE), ("50.00", APPROVE), ("10.00", decline(484))):
        pay(gateway, client, creds, amount, card=card)
    page, problems = _open(browser, DESKTOP)
    page.goto(f"{gateway.base_url}/cabinet/login?lang=en")
    page.fill("#email", email)
    page.fill("#password", "right-pass-1")
    page.click("#submit")
    page.wait_for_url("**/cabinet/dashboard")
    assert page.locator("h1").inner_text() == "Dashboard · Today"
    assert page.locator("#approved").inner_text() == "2"
    assert page.locator("#rate").inner_text() == "66.7\u00a0%"
    chart = page.locator("#chart")
    assert chart.is_visible()
    assert page.locator("#chart rect.bar").count() == 2  # approved and declined, this hour
    assert page.locator("#hours tbody tr").count() == 1  # for screen readers
    box = chart.bounding_box()
    assert box is not None and 300 < box["width"] <= DESKTOP["width"]
    page.screenshot(path=screenshot_path("cabinet-dashboard-desktop"), full_page=True)

    page.set_viewport_size(PHONE)  # type: ignore[arg-type]
    page.reload()
    chart = page.locator("#chart")
    assert chart.is_visible()
    box = chart.bounding_box()
    assert box is not None and box["x"] > 0 and box["x"] + box["width"] <= PHONE["width"]
    widths = page.evaluate(
        "() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    assert widths[0] <= widths[1], widths  # the page never scrolls sideways
    page.screenshot(path=screenshot_path("cabinet-dashboard-phone"), full_page=True)
    assert problems == []
    page.close()
