"""The merchant cabinet in real Chromium: log in, find a payment, open it, charge and
refund it, a locked account."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page

from tests.browser import chromium, screenshot_path, watched_page
from tests.cabinet_support import delivering_gateway, new_merchant, new_user, pay_as
from tests.receiver import running_receiver
from tests.support import Gateway
from tolem.cabinet.users import SANDBOX_EMAIL, SANDBOX_PASSWORD

PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as b:
        yield b


def _log_in(page: Page, gw: Gateway, email: str, password: str) -> None:
    page.goto(f"{gw.base_url}/cabinet/login?lang=en")
    page.fill("#email", email)
    page.fill("#password", password)
    page.click("#submit")


def _to_transactions(page: Page, gw: Gateway) -> None:
    """After a login: wait for the first page, then open the transactions from the menu."""
    page.wait_for_selector("#logout")
    page.click("#nav-transactions")
    page.wait_for_url("**/cabinet/transactions")


def test_log_in_and_find_a_payment_by_its_invoice(
    gateway: Gateway, browser: Browser, backend: str
) -> None:
    with gateway.client() as client:
        invoice, paid = pay_as(gateway, client, description="Cabinet <b>browser</b> test")
    assert paid.status_code == 200, paid.text
    page, problems = watched_page(browser, DESKTOP)
    _log_in(page, gateway, SANDBOX_EMAIL, SANDBOX_PASSWORD)
    _to_transactions(page, gateway)
    assert page.locator("h1").inner_text() == "Transactions"
    assert page.locator("#nav-transactions").get_attribute("aria-current") == "page"
    assert SANDBOX_EMAIL in page.locator("#who").inner_text()
    page.fill("#invoice", invoice)
    page.select_option("#status", "AUTH")
    page.click("#apply")
    page.wait_for_url(lambda url: f"invoice={invoice}" in url and "status=AUTH" in url)
    rows = page.locator("#transactions tbody tr")
    assert rows.count() == 1
    row = rows.first
    assert row.get_attribute("data-invoice") == invoice
    assert row.locator(".invoice").inner_text() == invoice
    assert row.locator(".num").inner_text() == "100.00 KZT"
    assert "AUTH" in row.inner_text() and paid.json()["reference"] in row.inner_text()
    assert "Cabinet <b>browser</b> test" in row.inner_text()  # shown as text, not markup
    page.screenshot(path=screenshot_path(f"cabinet-transactions-desktop-{backend}"))

    # At phone width the page itself never scrolls sideways; the table does.
    page.set_viewport_size(PHONE)  # type: ignore[arg-type]
    page.goto(f"{gateway.base_url}/cabinet/transactions")
    widths = page.evaluate(
        "() => [document.documentElement.scrollWidth, document.documentElement.clientWidth,"
        " document.querySelector('.scroll').scrollWidth,"
        " document.querySelector('.scroll').clientWidth]"
    )
    assert widths[0] <= widths[1], widths
    assert widths[2] > widths[3], widths  # the table is wider and scrolls in its box
    page.screenshot(path=screenshot_path(f"cabinet-transactions-phone-{backend}"), full_page=True)

    page.click("#logout")
    page.wait_for_url("**/cabinet/login")
    page.goto(f"{gateway.base_url}/cabinet/transactions")
    page.wait_for_url("**/cabinet/login")
    assert problems == []
    page.close()


def test_three_wrong_passwords_lock_the_account(
    gateway: Gateway, browser: Browser, backend: str
) -> None:
    email = new_user(gateway)
    page, problems = watched_page(browser, PHONE)
    for _ in range(2):
        _log_in(page, gateway, email, "wrong-pass")
        page.wait_for_selector("#error")
        assert page.locator("#error").inner_text() == "Wrong email or password"
    _log_in(page, gateway, email, "wrong-pass")
    page.wait_for_selector("#error")
    locked = page.locator("#error").inner_text()
    assert locked.startswith("Account locked after three wrong passwords; try again after ")
    assert locked.endswith(" UTC")
    _log_in(page, gateway, email, "right-pass-1")
    page.wait_for_selector("#error")
    assert page.locator("#error").inner_text() == locked
    assert page.url.endswith("/cabinet/login")
    page.screenshot(path=screenshot_path(f"cabinet-locked-phone-{backend}"))
    page.set_viewport_size(DESKTOP)  # type: ignore[arg-type]
    page.screenshot(path=screenshot_path(f"cabinet-locked-desktop-{backend}"))
    # The Russian page, and the chosen language remembered by the next visit.
    page.goto(f"{gateway.base_url}/cabinet/login?lang=ru")
    assert page.locator("h1").inner_text() == "Вход в кабинет"
    page.goto(f"{gateway.base_url}/cabinet/login")
    assert page.locator("#submit").inner_text() == "Войти"
    # Chromium reports the 401s and 423s of the refused logins; nothing else.
    refused = "Failed to load resource: the server responded with a status of "
    assert [p.removeprefix(refused) for p in problems] == [
        "401 (Unauthorized)",
        "401 (Unauthorized)",
        "423 (Locked)",
        "423 (Locked)",
    ]
    page.close()


def test_another_merchants_transactions_are_never_visible(
    gateway: Gateway, browser: Browser
) -> None:
    # A payment of the sandbox merchant, and a user of another merchant with its own.
    other = new_merchant(gateway, "Another shop")
    email = new_user(gateway, client_id=other["clientId"])
    with gateway.client() as client:
        theirs, paid = pay_as(gateway, client)
        mine, own = pay_as(gateway, client, creds=other)
    assert paid.status_code == own.status_code == 200, (paid.text, own.text)
    page, problems = watched_page(browser, DESKTOP)
    _log_in(page, gateway, email, "right-pass-1")
    _to_transactions(page, gateway)
    assert "Another shop" in page.locator("#who").inner_text()
    invoices = page.locator("#transactions tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.invoice)"
    )
    assert invoices == [mine]  # its own payment, and nothing of the sandbox merchant's
    page.fill("#invoice", theirs)
    page.click("#apply")
    page.wait_for_url(lambda url: f"invoice={theirs}" in url)
    assert page.locator("#transactions tbody tr").count() == 0
    # Its address typed in: a 404 that shows nothing of it.
    response = page.goto(f"{gateway.base_url}/cabinet/transactions/{paid.json()['id']}")
    assert response is not None and response.status == 404
    assert theirs not in page.content()
    assert page.locator("#f-invoice").count() == 0
    refused = "Failed to load resource: the server responded with a status of "
    assert [p.removeprefix(refused) for p in problems] == ["404 (Not Found)"]
    page.close()


def test_the_session_cookie_is_out_of_scripts_reach(gateway: Gateway, browser: Browser) -> None:
    page, problems = watched_page(browser, DESKTOP)
    _log_in(page, gateway, SANDBOX_EMAIL, SANDBOX_PASSWORD)
    page.wait_for_selector("#logout")
    assert "tolem_cabinet" not in page.evaluate("() => document.cookie")
    [cookie] = [c for c in page.context.cookies() if c["name"] == "tolem_cabinet"]
    assert (cookie["httpOnly"], cookie["sameSite"], cookie["path"]) == (True, "Strict", "/cabinet")
    with httpx.Client(base_url=gateway.base_url) as other:
        bounced = other.get("/cabinet/transactions")
        assert bounced.headers["location"] == "/cabinet/login"
    assert problems == []
    page.close()


def test_open_a_payment_charge_and_refund_part_of_it(browser: Browser, tmp_path: Path) -> None:
    with running_receiver() as receiver, delivering_gateway(tmp_path) as gw:
        link = receiver.url(f"/ok/{uuid.uuid4().hex}")
        with gw.client() as client:
            invoice, paid = pay_as(gw, client, postLink=link, description="Order <b>42</b>")
        assert paid.status_code == 200, paid.text
        tx_id = paid.json()["id"]
        page, problems = watched_page(browser, DESKTOP)
        _log_in(page, gw, SANDBOX_EMAIL, SANDBOX_PASSWORD)
        _to_transactions(page, gw)
        page.fill("#invoice", invoice)
        page.click("#apply")
        page.wait_for_url(lambda url: f"invoice={invoice}" in url)
        page.click(f"#transactions a[href='/cabinet/transactions/{tx_id}']")
        page.wait_for_url(f"**/cabinet/transactions/{tx_id}")
        assert page.locator("#f-invoice").inner_text() == invoice
        assert page.locator("#f-description").inner_text() == "Order <b>42</b>"
        assert page.locator("#status").inner_text() == "AUTH"

        page.fill("#charge-amount", "100")
        page.click("#charge")
        page.wait_for_selector("#question")
        assert page.locator("#question").inner_text() == "Confirm charge of 100.00 KZT?"
        page.click("#confirm")
        page.wait_for_selector("#message")
        assert page.locator("#message").inner_text() == "Charged 100.00 KZT"
        assert page.locator("#status").inner_text() == "CHARGE"

        page.fill("#refund-amount", "30")
        page.click("#refund")
        page.wait_for_selector("#question")
        assert page.locator("#question").inner_text() == "Confirm refund of 30.00 KZT?"
        page.click("#confirm")
        page.wait_for_selector("#message")
        assert page.locator("#message").inner_text() == "Refunded 30.00 KZT"
        assert page.locator("#f-refunded").inner_text() == "30.00 KZT"
        assert page.locator("#history tbody tr").last.get_attribute("data-kind") == "refund"
        refund_op = page.locator("#operations tr[data-kind='refund']")
        assert refund_op.get_attribute("data-state") == "done"
        assert refund_op.locator(".by").inner_text() == f"cabinet:{SANDBOX_EMAIL}"
        assert page.locator("#refund-amount").input_value() == "70.00"

        # The refund's postLink arrives, and its attempt shows after a reload.
        receiver.wait_for(link.removeprefix(receiver.base_url), 3)
        refund = page.locator("section.postlink[data-event='refund']")
        deadline = time.monotonic() + 20
        while refund.locator("tr[data-outcome='delivered']").count() == 0:
            assert time.monotonic() < deadline, page.content()
            page.wait_for_timeout(50)
            page.reload()
        row = refund.locator("tr[data-outcome='delivered']").first
        assert row.get_attribute("data-http") == "200"
        assert "200 (delivered)" in row.inner_text() and " ms" in row.inner_text()
        page.screenshot(path=screenshot_path("cabinet-transaction-desktop"), full_page=True)

        page.set_viewport_size(PHONE)  # type: ignore[arg-type]
        page.reload()
        widths = page.evaluate(
            "() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
        )
        assert widths[0] <= widths[1], widths
        page.screenshot(path=screenshot_path("cabinet-transaction-phone"), full_page=True)
        assert problems == []
        page.close()
