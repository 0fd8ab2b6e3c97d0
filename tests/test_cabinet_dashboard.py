"""The cabinet's dashboard (issue 8): one UTC day of a merchant's payments, counted
exactly, scoped to the merchant, with its chart; over HTTP and in real Chromium, on
SQLite and PostgreSQL."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from playwright.sync_api import Browser

from tests.browser import chromium, screenshot_path, watched_page
from tests.cabinet_support import log_in, new_merchant, new_user, pay_as
from tests.conftest import fresh_postgres
from tests.support import (
    Gateway,
    cryptogram,
    cryptopay,
    new_invoice,
    payment_body,
    start_gateway,
    token,
)
from tolem import sandbox as sandbox_merchant
from tolem.cabinet.users import SANDBOX_EMAIL, SANDBOX_PASSWORD
from tolem.merchants.models import Merchant
from tolem.payments.models import Operation, Transaction
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


def a_days_payments(
    gateway: Gateway, client: httpx.Client
) -> tuple[dict[str, Any], str, set[int]] | None:
    """A fresh merchant's payments (and another merchant's), all made within one UTC
    day: the merchant, that day and the UTC hours used; None if the day changed
    meanwhile (the run crossed UTC midnight)."""
    started = datetime.now(UTC)
    creds = new_merchant(gateway, name="Dash <b>shop</b>")
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
    finished = datetime.now(UTC)
    if finished.date() != started.date():
        return None
    return creds, started.date().isoformat(), {started.hour, finished.hour}


def test_the_days_figures_are_exact_and_only_the_merchants_own(
    gateway: Gateway, client: httpx.Client
) -> None:
    # Payments, refunds and the page are all asked for that one UTC day (?day=), so a
    # run that crosses UTC midnight does not split them: it starts again, once.
    made = a_days_payments(gateway, client) or a_days_payments(gateway, client)
    assert made is not None, "the UTC day changed twice during the test"
    creds, day, hours = made

    user = user_of(gateway, creds)
    page = user.get("/cabinet/dashboard", params={"day": day})
    assert page.status_code == 200, page.text
    body = page.text
    # "as of" only while the day is today.
    note = rf"{day}, the UTC day \(00:00\u201324:00 UTC\)(, as of \d\d:\d\d UTC)?"
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
    assert bars and {h for h, _kind, _n in bars} <= hours
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
    theirs = sandbox.get("/cabinet/dashboard", params={"lang": "en", "day": day}).text
    assert "1654" in theirs
    # Its figures are its own transactions' (other tests of this gateway pay as the
    # sandbox merchant too): the database, asked directly, agrees.
    start = datetime.fromisoformat(day).replace(tzinfo=UTC)
    engine = sa.create_engine(gateway.database_url, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            own = conn.execute(
                sa.select(Transaction.reason_code, Transaction.status)
                .join(Merchant, Merchant.id == Transaction.merchant_id)
                .where(
                    Merchant.client_id == sandbox_merchant.CLIENT_ID,
                    Transaction.created_at >= start,
                    Transaction.created_at < start + timedelta(days=1),
                )
            ).all()
    finally:
        engine.dispose()
    assert text_of(theirs, "attempts") == str(len(own))
    declined = [r.reason_code for r in own if r.status in ("FAILED", "REJECT", "3D")]
    shown = rows(theirs, "declines", "data-code")
    for code, row in shown.items():
        assert cell(row, "count") == str(declined.count(int(code))), code
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

    # The first day there is: shown (empty), with no link to a day before it.
    first = user.get("/cabinet/dashboard", params={"day": "0001-01-01"})
    assert first.status_code == 200, first.text
    assert text_of(first.text, "attempts") == "0" and 'id="previous"' not in first.text
    assert 'href="/cabinet/dashboard?day=0001-01-02" id="next"' in first.text

    hostile = user.get("/cabinet/dashboard", params={"day": "<script>alert(1)</script>"})
    assert hostile.status_code == 400
    assert "<script>alert" not in hostile.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in hostile.text
    user.close()


# --- day boundaries in another time zone -------------------------------------------


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def almaty(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """A gateway of its own; on PostgreSQL its database's sessions are in Asia/Almaty
    (UTC+5), as a server set up in Kazakhstan would be."""
    data_dir: Path = tmp_path_factory.mktemp("cabinet-dashboard-tz")
    if request.param == "sqlite":
        with start_gateway(data_dir, f"sqlite:///{data_dir / 'tolem.db'}") as gateway:
            yield gateway
        return
    with fresh_postgres("tolem_cab_dash_tz") as url:
        # No pool: every connect below is a new session, as the gateway's will be.
        engine = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
        try:
            with engine.connect() as conn:
                name = conn.execute(sa.text("SELECT current_database()")).scalar_one()
                conn.execute(sa.text(f"ALTER DATABASE \"{name}\" SET timezone TO 'Asia/Almaty'"))
            with engine.connect() as conn:
                assert conn.execute(sa.text("SHOW timezone")).scalar_one() == "Asia/Almaty"
        finally:
            engine.dispose()
        with start_gateway(data_dir, url) as gateway:
            yield gateway


def at(day: date, clock: str) -> datetime:
    """``clock`` (HH:MM:SS.f) of ``day``, in UTC."""
    return datetime.combine(day, datetime.strptime(clock, "%H:%M:%S.%f").time(), UTC)


def test_days_and_hours_are_utc_whatever_the_databases_time_zone(almaty: Gateway) -> None:
    """Payments just either side of UTC midnight land on their UTC day and hour, also
    when PostgreSQL's session time zone is Asia/Almaty (where they would be 5 hours
    later, on the other side of local midnight)."""
    client = almaty.client()
    creds = new_merchant(almaty)
    day = datetime.now(UTC).date() - timedelta(days=3)
    before = pay(almaty, client, creds, "300.00")
    first = pay(almaty, client, creds, "100.00")
    last = pay(almaty, client, creds, "200.00")
    after = pay(almaty, client, creds, "10.00", card=decline(484))
    operate(client, creds, first["id"], "charge")
    operate(client, creds, first["id"], "refund", "50.00")
    moved = {
        before["id"]: at(day - timedelta(days=1), "23:30:00.0"),  # Almaty: `day` 04:30
        first["id"]: at(day, "00:00:00.0"),  # the day's first instant
        last["id"]: at(day, "23:59:59.5"),  # Almaty: the next day 04:59
        after["id"]: at(day + timedelta(days=1), "00:00:00.0"),  # the next day's first
    }
    engine = sa.create_engine(almaty.database_url, poolclass=sa.NullPool)
    with engine.begin() as conn:
        for tx_id, created in moved.items():
            conn.execute(
                sa.update(Transaction).where(Transaction.id == tx_id).values(created_at=created)
            )
        refund = sa.update(Operation).where(
            Operation.transaction_id == first["id"], Operation.kind == "refund"
        )
        # Almaty: the next day 01:00; a refund counts on its UTC day.
        conn.execute(refund.values(finished_at=at(day, "20:00:00.0")))
    engine.dispose()
    user = user_of(almaty, creds)

    def figures(d: date) -> tuple[str, list[tuple[int, str, int]], dict[str, str]]:
        page = user.get("/cabinet/dashboard", params={"day": d.isoformat()})
        assert page.status_code == 200, page.text
        bars = [(int(h), kind, int(n)) for h, kind, n in BAR.findall(page.text)]
        volume = rows(page.text, "volume", "data-currency") if 'id="volume"' in page.text else {}
        return text_of(page.text, "attempts"), bars, volume

    attempts, bars, volume = figures(day)
    assert attempts == "2" and bars == [(0, "approved", 1), (23, "approved", 1)]
    kzt = volume["KZT"]
    assert (cell(kzt, "count"), cell(kzt, "amount")) == ("2", "300.00")  # 100 charged + 200
    assert (cell(kzt, "refunds"), cell(kzt, "refunded")) == ("1", "50.00")
    attempts, bars, volume = figures(day - timedelta(days=1))
    assert attempts == "1" and bars == [(23, "approved", 1)]
    assert cell(volume["KZT"], "amount") == "300.00" and cell(volume["KZT"], "refunds") == "0"
    attempts, bars, volume = figures(day + timedelta(days=1))
    assert attempts == "1" and bars == [(0, "declined", 1)] and volume == {}
    user.close()
    client.close()


# --- in Chromium ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as b:
        yield b


def test_the_dashboard_in_a_browser_at_desktop_and_phone_width(
    gateway: Gateway, browser: Browser, client: httpx.Client
) -> None:
    creds = new_merchant(gateway, name="Chart shop")
    email = new_user(gateway, client_id=creds["clientId"])
    for amount, card in (("100.00", APPROVE), ("50.00", APPROVE), ("10.00", decline(484))):
        pay(gateway, client, creds, amount, card=card)
    page, problems = watched_page(browser, DESKTOP)
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
