"""The hosted payment page in real Chromium, as a shop and a cardholder use it.

A shop page (tests/merchant_site.py) loads /payform/payment-api.js and calls
halyk.pay() or halyk.showPaymentWidget() with the original document's payment object
and a fresh token; the cardholder types a card on tolem's page.
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import parse_qs, quote, urlsplit

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page

from tests.browser import chromium, screenshot_path
from tests.merchant_site import running_shop
from tests.secure3d_support import VISA_3DS
from tests.support import Gateway, query

VISA = ("4405639704015096", "01/25", "815")
DECLINED = ("5578342710750560", "09/20", "254")  # 484, insufficient funds
PHONE = {"width": 360, "height": 740}
DESKTOP = {"width": 1280, "height": 900}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as b:
        yield b


@pytest.fixture
def shop(gateway: Gateway) -> Iterator[str]:
    with running_shop(gateway) as base:
        yield base


def _open(browser: Browser, viewport: dict[str, int] = DESKTOP) -> tuple[Page, list[str]]:
    """A page that records what the browser refused (CSP violations) and page errors."""
    page = browser.new_page(viewport=viewport)  # type: ignore[arg-type]
    problems: list[str] = []

    def console(message: ConsoleMessage) -> None:
        # Chromium ignores the ACS page's autofocus inside a cross-origin frame (the
        # widget) and says so; the page works the same without it.
        if message.text.startswith("Blocked autofocusing"):
            return
        if message.type == "error" or "Content Security Policy" in message.text:
            problems.append(message.text)

    page.on("console", console)
    page.on("pageerror", lambda e: problems.append(str(e)))
    return page, problems


def _to_payform(page: Page, shop_page: str) -> None:
    """Open the shop's checkout and press its button: halyk.pay() takes us to the form."""
    page.goto(shop_page)
    page.click("#pay")
    page.wait_for_url("**/payform/?params=*")


def _type_card(page: Page, card: tuple[str, str, str], name: str = "JON JONSON") -> None:
    """Type as a person does: digits only, the page formats them."""
    page.click("#pan")
    page.keyboard.type(card[0])
    page.click("#exp")
    page.keyboard.type(card[1].replace("/", ""))
    page.click("#cvc")
    page.keyboard.type(card[2])
    page.fill("#name", name)


def test_halyk_pay_then_back_link_and_a_decline_to_failure_back_link(
    gateway: Gateway, shop: str, browser: Browser, backend: str
) -> None:
    page, problems = _open(browser)
    _to_payform(page, f"{shop}/halyk?mode=pay&language=EN")
    assert page.locator("#amount").inner_text() == "100.00"
    assert page.locator("#currency").inner_text() == "KZT"
    assert page.locator("#description").inner_text() == "Оплата в интернет магазине"
    assert page.locator("#merchant").inner_text() == "ePay test merchant"
    _type_card(page, VISA)
    assert page.locator("#pan").input_value() == "4405 6397 0401 5096"
    assert page.locator("#brand").inner_text() == "VISA"
    page.click("#pay")
    page.wait_for_url("**/payform/result/*")
    assert page.locator("#result").inner_text() == "Payment successful"
    reference = page.locator("#reference").inner_text()
    assert len(reference) == 12 and reference.isdigit()
    page.screenshot(path=screenshot_path(f"payform-result-en-{backend}"))
    page.click("#back")
    page.wait_for_url(f"{shop}/back/success?*")
    back = parse_qs(urlsplit(page.url).query)
    assert back["status"] == ["AUTH"] and back["reference"] == [reference]
    rows = query(
        gateway.database_url,
        "SELECT status FROM transactions WHERE invoice_id = :i",
        i=back["invoiceId"][0],
    )
    assert [r.status for r in rows] == ["AUTH"]

    # A declined card with autoBackLink: straight to failureBackLink, no result screen.
    _to_payform(page, f"{shop}/halyk?mode=pay&language=EN&auto=1")
    _type_card(page, DECLINED)
    page.click("#pay")
    page.wait_for_url(f"{shop}/back/failure?*")
    failed = parse_qs(urlsplit(page.url).query)
    assert failed["status"] == ["FAILED"] and failed["code"] == ["484"]
    assert problems == []


def test_widget_pays_in_an_iframe_and_calls_back_with_success(
    shop: str, browser: Browser, backend: str
) -> None:
    page, problems = _open(browser)
    page.goto(f"{shop}/halyk?mode=widget&language=RU")
    page.click("#pay-widget")
    overlay = page.locator(".widgetScreen")
    overlay.wait_for()
    frame = page.frame_locator(".widgetScreen iframe")
    frame.locator("#pan").wait_for()
    assert frame.locator("main.payform.short").count() == 1
    assert frame.locator("#amount").inner_text() == "100.00"
    page.screenshot(path=screenshot_path(f"payform-widget-ru-{backend}"))
    frame.locator("#pan").type(VISA[0])
    frame.locator("#exp").type("0125")
    frame.locator("#cvc").type(VISA[2])
    frame.locator("#name").fill("JON JONSON")
    frame.locator("#pay").click()
    page.wait_for_function("window.widgetResult !== undefined")
    assert page.evaluate("window.widgetResult") == {"success": True}
    assert page.locator("#outcome").inner_text() == '{"success":true}'
    assert overlay.count() == 0
    assert problems == []


def test_widget_with_a_3ds_card_shows_the_acs_in_its_frame(shop: str, browser: Browser) -> None:
    page, problems = _open(browser)
    page.goto(f"{shop}/halyk?mode=widget&language=EN")
    page.click("#pay-widget")
    frame = page.frame_locator(".widgetScreen iframe")
    frame.locator("#pan").type(VISA_3DS[0])
    frame.locator("#exp").type("1230")
    frame.locator("#cvc").type(VISA_3DS[2])
    frame.locator("#name").fill("JON JONSON")
    frame.locator("#pay").click()
    frame.locator("#sandbox-code").wait_for()  # the issuer's page, framed by the shop
    frame.locator("#code").fill(frame.locator("#sandbox-code").inner_text())
    frame.locator("#confirm").click()
    page.wait_for_function("window.widgetResult !== undefined")
    assert page.evaluate("window.widgetResult") == {"success": True}
    assert page.locator(".widgetScreen").count() == 0
    assert problems == []


def test_a_3ds_card_through_the_page(shop: str, browser: Browser, backend: str) -> None:
    page, problems = _open(browser)
    _to_payform(page, f"{shop}/halyk?mode=pay&language=KZ")
    assert page.locator("html").get_attribute("lang") == "kk"
    _type_card(page, (VISA_3DS[0], "12/30", VISA_3DS[2]))
    page.click("#pay")
    page.wait_for_url("**/acs/pa")
    assert page.locator("#card").inner_text() == f"{VISA_3DS[0][:6]}...{VISA_3DS[0][-4:]}"
    page.fill("#code", page.locator("#sandbox-code").inner_text())
    page.click("#confirm")
    page.wait_for_url("**/payform/result/*")
    assert page.locator("#result").inner_text() == "Төлем сәтті өтті"
    page.click("#back")
    page.wait_for_url(f"{shop}/back/success?*")
    assert problems == []


def test_a_description_with_markup_renders_as_text(shop: str, browser: Browser) -> None:
    page, problems = _open(browser)
    evil = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2"><b>bold</b>'
    _to_payform(page, f"{shop}/halyk?mode=pay&language=EN&description={quote(evil)}")
    assert page.locator("#description").inner_text() == evil
    assert page.locator("#description b").count() == 0
    assert page.evaluate("window.pwned") is None
    assert problems == []


def test_card_verification_saves_the_card(gateway: Gateway, shop: str, browser: Browser) -> None:
    page, problems = _open(browser)
    _to_payform(page, f"{shop}/halyk?mode=verify&language=EN")
    assert page.locator("#verify-note").is_visible()
    assert page.locator("#amount").count() == 0
    _type_card(page, VISA)
    page.click("#pay")
    page.wait_for_url("**/payform/result/*")
    assert page.locator("#result").inner_text() == "Card verified and saved"
    page.click("#back")
    page.wait_for_url(f"{shop}/back/success?*")
    invoice = parse_qs(urlsplit(page.url).query)["invoiceId"][0]
    rows = query(
        gateway.database_url,
        "SELECT t.status, t.amount_charged, c.state, c.card_mask FROM transactions t "
        "JOIN saved_cards c ON c.id = t.card_id WHERE t.invoice_id = :i",
        i=invoice,
    )
    assert [(r.status, int(r.amount_charged), r.state, r.card_mask) for r in rows] == [
        ("VERIFIED", 0, "active", "440563...5096")
    ]
    assert problems == []


@pytest.mark.parametrize("language", ["RU", "KZ", "EN"])
def test_screenshots_desktop_and_phone(
    shop: str, browser: Browser, language: str, backend: str
) -> None:
    for name, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
        page, problems = _open(browser, viewport)
        _to_payform(page, f"{shop}/halyk?mode=pay&language={language}")
        _type_card(page, VISA)
        # Usable at phone width: nothing wider than the screen, the button in reach.
        width = page.evaluate("document.scrollingElement.scrollWidth")
        assert width <= viewport["width"], (name, width)
        box = page.locator("#pay").bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= viewport["width"]
        page.screenshot(
            path=screenshot_path(f"payform-{language.lower()}-{name}-{backend}"), full_page=True
        )
        assert problems == []
        page.close()
