"""The card payment page's script and stylesheet in real Chromium, on a static harness.

The harness is the page's DOM contract with realistic data; the form posts to a routed
origin that answers 204 No Content, so the page stays put and every POST is counted.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, Route

from tests.browser import chromium, screenshot_path

STATIC = Path(__file__).resolve().parent.parent / "src" / "tolem" / "payform" / "static"
SCRIPT = STATIC / "payform.js"
STYLE = STATIC / "payform.css"

ORIGIN = "https://payform.test"
ACTION = f"{ORIGIN}/payform/pay"

MESSAGES = {
    "pan": "Check the card number",
    "exp": "Enter the expiry date as MM/YY",
    "cvc": "Enter the 3- or 4-digit code from the back of the card",
    "name": "Enter the name printed on the card",
    "email": "Check the e-mail address",
    "wait": "Processing payment…",
}

VISA = "4405639704015096"
MASTERCARD = "5522042705066736"
AMEX = "377514500004820"

PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Payment</title>{head}</head>
<body>
<main class="payform{short}">
  <header>
    <h1 id="merchant">ePay test merchant</h1>
    <p id="description">Winter tyres, 4 pcs, delivery to Almaty</p>
    <p class="total"><span id="amount">100.00</span> <span id="currency">KZT</span></p>
    <p id="invoice">Order 000000001</p>
  </header>
  <p id="form-error" role="alert" class="error"></p>
  <form id="payform" method="post" action="{action}" novalidate
        data-msg-pan="{pan}" data-msg-exp="{exp}" data-msg-cvc="{cvc}"
        data-msg-name="{name}" data-msg-email="{email}" data-msg-wait="{wait}">
    <input type="hidden" name="params" value="eyJpbnZvaWNlSWQiOiIwMDAwMDAwMDEifQ.c2lnbmF0dXJl">
    <input type="hidden" name="template" value="default">
    <input type="hidden" name="lang" value="eng">
    <label for="pan">Card number</label>
    <div class="pan-row"><input id="pan" name="pan" inputmode="numeric"
         autocomplete="cc-number" aria-describedby="pan-error">
      <span id="brand" aria-live="polite"></span></div>
    <p id="pan-error" class="field-error"></p>
    <div class="row">
      <div><label for="exp">Valid thru</label><input id="exp" name="exp" inputmode="numeric"
           autocomplete="cc-exp" placeholder="MM/YY" aria-describedby="exp-error">
           <p id="exp-error" class="field-error"></p></div>
      <div><label for="cvc">CVC/CVV</label><input id="cvc" name="cvc" type="password"
           inputmode="numeric" autocomplete="cc-csc" aria-describedby="cvc-error">
           <p id="cvc-error" class="field-error"></p></div>
    </div>
    <label for="name">Cardholder name</label><input id="name" name="name" autocomplete="cc-name"
           aria-describedby="name-error"><p id="name-error" class="field-error"></p>
    <label for="email">E-mail for the receipt</label><input id="email" name="email"
           type="email" autocomplete="email" aria-describedby="email-error">
           <p id="email-error" class="field-error"></p>
    <label for="phone">Phone</label><input id="phone" name="phone" type="tel" autocomplete="tel">
    <button id="pay" type="submit">Pay 100.00 KZT</button>
  </form>
  <footer><p>Payments by tolem, an ePay-compatible gateway</p></footer>
</main>
{body_end}
</body>
</html>
"""


def page_html(*, short: bool = False, head: str = "", body_end: str = "") -> str:
    return PAGE.format(
        short=" short" if short else "",
        action=ACTION,
        head=head,
        body_end=body_end,
        **MESSAGES,
    )


@dataclass
class Form:
    page: Page
    posts: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def value(self, selector: str) -> str:
        return self.page.input_value(selector)

    def type(self, selector: str, text: str) -> None:
        self.page.locator(selector).press_sequentially(text)

    def error(self, key: str) -> str:
        return self.page.locator(f"#{key}-error").inner_text()

    def invalid(self, key: str) -> bool:
        locator = self.page.locator(f"#{key}")
        marked = locator.get_attribute("aria-invalid") == "true"
        classed = locator.evaluate("el => el.classList.contains('invalid')")
        assert marked == classed, f"#{key}: aria-invalid and class 'invalid' disagree"
        return marked

    def focused(self) -> str:
        return self.page.evaluate("document.activeElement && document.activeElement.id")

    def fill_valid(self, card: str = VISA, exp: str = "0125", cvc: str = "815") -> None:
        self.type("#pan", card)
        self.type("#exp", exp)
        self.type("#cvc", cvc)
        self.type("#name", "aigerim nurlanovna")
        self.type("#email", "aigerim@example.kz")
        self.type("#phone", "+77011234567")

    def settle(self, ms: int = 400) -> None:
        """Let the page (and the route handler) run: a POST would have arrived by now."""
        self.page.wait_for_timeout(ms)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


@contextmanager
def open_form(browser: Browser, *, width: int = 1280, height: int = 900, short: bool = False):
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    form = Form(page)
    page.on("pageerror", lambda exc: form.errors.append(str(exc)))

    def answer(route: Route) -> None:
        if route.request.method == "POST":
            form.posts.append(route.request.post_data or "")
        route.fulfill(status=204)

    page.route(f"{ORIGIN}/**", answer)
    try:
        page.set_content(page_html(short=short))
        page.add_style_tag(path=STYLE)
        page.add_script_tag(path=SCRIPT)
        yield form
        assert form.errors == [], f"script errors: {form.errors}"
    finally:
        context.close()


@pytest.fixture
def form(browser: Browser) -> Iterator[Form]:
    with open_form(browser) as opened:
        yield opened


# ---- card number ---------------------------------------------------------------------


def test_visa_number_is_grouped_branded_and_capped_at_19_digits(form: Form) -> None:
    form.type("#pan", "4405x63-9704015096")
    assert form.value("#pan") == "4405 6397 0401 5096"
    assert form.page.locator("#brand").inner_text() == "VISA"
    assert form.page.get_attribute("#payform", "data-brand") == "visa"
    form.type("#pan", "1234")  # Visa issues 19-digit cards too; a 20th digit is dropped
    assert form.value("#pan") == "4405 6397 0401 5096 123"


def test_amex_is_grouped_4_6_5_and_capped_at_15_digits(form: Form) -> None:
    form.type("#pan", AMEX + "99")
    assert form.value("#pan") == "3775 145000 04820"
    assert form.page.locator("#brand").inner_text() == "AMEX"
    assert form.page.get_attribute("#payform", "data-brand") == "amex"


def test_mastercard_test_card_is_recognised(form: Form) -> None:
    form.type("#pan", MASTERCARD)
    assert form.value("#pan") == "5522 0427 0506 6736"
    assert form.page.locator("#brand").inner_text() == "MASTERCARD"


@pytest.mark.parametrize(
    ("pasted", "brand", "formatted"),
    [
        ("2200123412341234999", "MIR", "2200 1234 1234 1234 999"),
        ("2204 9999 9999 9999", "MIR", "2204 9999 9999 9999"),
        ("222100000000000999", "MASTERCARD", "2221 0000 0000 0009"),
        ("2720990000000000", "MASTERCARD", "2720 9900 0000 0000"),
        ("51", "MASTERCARD", "51"),
        ("55", "MASTERCARD", "55"),
        ("34", "AMEX", "34"),
        ("621234567890123456789", "UNIONPAY", "6212 3456 7890 1234 567"),
        ("6759649826438453", "MAESTRO", "6759 6498 2643 8453"),
        ("50", "MAESTRO", "50"),
        ("56", "MAESTRO", "56"),
        ("58", "MAESTRO", "58"),
        ("63", "MAESTRO", "63"),
        ("2205", "", "2205"),
        ("2220", "", "2220"),
        ("2721", "", "2721"),
        ("59", "", "59"),
        ("35", "", "35"),
        ("999988887777666655544", "", "9999 8888 7777 6666 555"),
    ],
)
def test_brand_ranges(form: Form, pasted: str, brand: str, formatted: str) -> None:
    form.page.fill("#pan", pasted)  # one input event, like a paste
    assert form.value("#pan") == formatted
    assert form.page.locator("#brand").inner_text() == brand
    expected = brand.lower() or None
    assert form.page.get_attribute("#payform", "data-brand") == expected


def test_brand_clears_when_the_number_is_erased(form: Form) -> None:
    form.type("#pan", "4405")
    assert form.page.locator("#brand").inner_text() == "VISA"
    for _ in range(4):
        form.page.keyboard.press("Backspace")
    assert form.value("#pan") == ""
    assert form.page.locator("#brand").inner_text() == ""
    assert form.page.get_attribute("#payform", "data-brand") is None


def test_caret_stays_by_the_digit_typed_or_deleted_mid_number(form: Form) -> None:
    form.type("#pan", "44056397")
    form.page.evaluate("document.getElementById('pan').setSelectionRange(4, 4)")
    form.page.keyboard.type("1")
    assert form.value("#pan") == "4405 1639 7"
    assert form.page.evaluate("document.getElementById('pan').selectionStart") == 6
    # Backspace just after a group's space removes the digit before the space.
    form.page.evaluate("document.getElementById('pan').setSelectionRange(5, 5)")
    form.page.keyboard.press("Backspace")
    assert form.value("#pan") == "4401 6397"
    assert form.page.evaluate("document.getElementById('pan').selectionStart") == 3


def test_luhn_invalid_number_shows_the_error_and_blocks_submission(form: Form) -> None:
    form.type("#pan", VISA[:-1] + "7")
    assert form.error("pan") == ""  # not while typing
    assert not form.invalid("pan")
    form.type("#exp", "0125")
    form.type("#cvc", "815")
    form.type("#name", "Aigerim Nurlanovna")
    form.page.click("#pay")
    form.settle()
    assert form.posts == []
    assert form.focused() == "pan"
    assert form.error("pan") == MESSAGES["pan"]
    assert form.invalid("pan")
    assert not form.invalid("exp") and not form.invalid("name")
    # Fixing the last digit clears the error at once.
    form.page.keyboard.press("Backspace")
    form.page.keyboard.type("6")
    assert form.error("pan") == ""
    assert not form.invalid("pan")
    assert form.page.get_attribute("#pan", "aria-invalid") is None


def test_luhn_is_checked_on_blur(form: Form) -> None:
    form.type("#pan", "4405 6397 0401 509")
    form.page.keyboard.press("Tab")
    assert form.focused() == "exp"  # blur never pulls focus back
    assert form.error("pan") == MESSAGES["pan"]
    assert form.invalid("pan")


# ---- expiry, CVC, name, e-mail ---------------------------------------------------------


def test_expiry_gets_its_slash_and_month_padding(form: Form) -> None:
    form.type("#exp", "125")
    assert form.value("#exp") == "12/5"
    form.page.fill("#exp", "")
    form.type("#exp", "4")
    assert form.value("#exp") == "04/"
    form.type("#exp", "27")
    assert form.value("#exp") == "04/27"
    form.type("#exp", "9")
    assert form.value("#exp") == "04/27"
    form.page.fill("#exp", "")
    form.type("#exp", "1/")
    assert form.value("#exp") == "01/"
    # Backspace on "12/" takes the slash only.
    form.page.fill("#exp", "")
    form.type("#exp", "12")
    assert form.value("#exp") == "12/"
    form.page.keyboard.press("Backspace")
    assert form.value("#exp") == "12"
    form.page.fill("#exp", "03/2027")  # autofill style
    assert form.value("#exp") == "03/27"


def test_month_13_is_an_error_but_a_past_date_is_not(form: Form) -> None:
    form.type("#exp", "13/25")
    assert form.value("#exp") == "13/25"
    form.page.keyboard.press("Tab")
    assert form.error("exp") == MESSAGES["exp"]
    assert form.invalid("exp")
    form.page.fill("#exp", "")
    form.type("#exp", "0125")  # the sandbox cards' expiry, long past
    assert form.value("#exp") == "01/25"
    assert form.error("exp") == ""
    assert not form.invalid("exp")
    form.page.fill("#exp", "1")
    form.page.keyboard.press("Tab")
    assert form.invalid("exp")


def test_cvc_is_three_digits_or_four_for_amex(form: Form) -> None:
    form.type("#pan", VISA)
    form.type("#cvc", "8a155")
    assert form.value("#cvc") == "815"
    form.page.fill("#cvc", "")
    form.type("#cvc", "81")
    form.page.keyboard.press("Tab")
    assert form.error("cvc") == MESSAGES["cvc"]
    assert form.invalid("cvc")

    form.page.fill("#pan", "")
    form.type("#pan", AMEX)
    form.page.fill("#cvc", "")
    form.type("#cvc", "41699")
    assert form.value("#cvc") == "4169"
    assert not form.invalid("cvc")
    form.page.fill("#cvc", "")
    form.type("#cvc", "416")
    form.page.keyboard.press("Tab")
    assert form.invalid("cvc")


def test_amex_cvc_becomes_wrong_when_the_card_turns_out_to_be_visa(form: Form) -> None:
    form.fill_valid(card=AMEX, cvc="4169")
    form.page.fill("#pan", VISA)
    assert form.invalid("cvc")
    form.page.click("#pay")
    form.settle()
    assert form.posts == []
    assert form.focused() == "cvc"


def test_missing_name_is_an_error(form: Form) -> None:
    form.fill_valid()
    form.page.fill("#name", "   ")
    form.page.click("#pay")
    form.settle()
    assert form.posts == []
    assert form.focused() == "name"
    assert form.error("name") == MESSAGES["name"]
    assert form.invalid("name")
    form.type("#name", "A")
    assert not form.invalid("name")


def test_name_is_uppercased_and_limited_to_100_characters(form: Form) -> None:
    form.type("#name", "aigerim n")
    assert form.value("#name") == "AIGERIM N"
    assert form.page.get_attribute("#name", "maxlength") == "100"


def test_email_is_optional_but_checked_when_given(form: Form) -> None:
    form.type("#email", "aigerim@example")
    form.page.keyboard.press("Tab")
    assert form.error("email") == MESSAGES["email"]
    assert form.invalid("email")
    form.page.fill("#email", "")
    assert not form.invalid("email")


def test_empty_form_shows_every_required_error_and_focuses_the_card_number(form: Form) -> None:
    form.page.click("#pay")
    form.settle()
    assert form.posts == []
    assert form.focused() == "pan"
    for key in ("pan", "exp", "cvc", "name"):
        assert form.error(key) == MESSAGES[key]
        assert form.invalid(key)
    assert form.error("email") == ""
    assert not form.invalid("email")
    assert form.page.locator("#pay").is_enabled()


# ---- submission ------------------------------------------------------------------------


def test_valid_form_posts_exactly_once(form: Form) -> None:
    form.fill_valid()
    form.page.locator("#pay").dblclick()
    form.page.focus("#phone")
    form.page.keyboard.press("Enter")
    form.page.keyboard.press("Enter")
    # Even a script asking again is refused.
    form.page.evaluate("document.getElementById('payform').requestSubmit()")
    form.settle(800)
    assert len(form.posts) == 1, form.posts
    body = form.posts[0]
    assert "params=eyJpbnZvaWNlSWQiOiIwMDAwMDAwMDEifQ.c2lnbmF0dXJl" in body
    assert "pan=4405+6397+0401+5096" in body
    assert "exp=01%2F25" in body and "cvc=815" in body and "name=AIGERIM+NURLANOVNA" in body
    pay = form.page.locator("#pay")
    assert pay.is_disabled()
    assert pay.inner_text() == MESSAGES["wait"]
    assert "busy" in (form.page.get_attribute("#payform", "class") or "").split()


def test_every_later_submit_event_is_cancelled(form: Form) -> None:
    form.fill_valid()
    form.page.evaluate(
        """() => {
            window.outcomes = [];
            window.addEventListener("submit", e => window.outcomes.push(e.defaultPrevented));
            const f = document.getElementById("payform");
            f.requestSubmit();
            f.dispatchEvent(new SubmitEvent("submit", {cancelable: true, bubbles: true}));
            f.requestSubmit();
        }"""
    )
    assert form.page.evaluate("window.outcomes") == [False, True, True]
    form.settle()
    assert len(form.posts) == 1


def test_restored_from_back_forward_cache_reloads(form: Form) -> None:
    restore = "persisted => window.dispatchEvent(new PageTransitionEvent('pageshow', {persisted}))"
    form.page.evaluate("window.marker = 1")
    form.page.evaluate(restore, False)
    form.settle(200)
    assert form.page.evaluate("window.marker") == 1
    with form.page.expect_event("load", timeout=5000):
        form.page.evaluate(restore, True)
    assert form.page.evaluate("window.marker") is None


# ---- keyboard, layout, CSP ----------------------------------------------------------


def test_keyboard_alone_tabs_through_the_form_in_order(form: Form) -> None:
    form.page.focus("#pan")
    seen = ["pan"]
    for _ in range(6):
        form.page.keyboard.press("Tab")
        seen.append(form.focused())
    assert seen == ["pan", "exp", "cvc", "name", "email", "phone", "pay"]
    form.page.keyboard.press("Shift+Tab")
    assert form.focused() == "phone"


def test_keyboard_alone_fills_and_pays(form: Form) -> None:
    form.page.focus("#pan")
    keyboard = form.page.keyboard
    for text in (VISA, "0125", "815", "Aigerim Nurlanovna", "", ""):
        keyboard.type(text)
        keyboard.press("Tab")
    assert form.focused() == "pay"
    outline = form.page.evaluate(
        "() => { const s = getComputedStyle(document.activeElement);"
        " return [s.outlineStyle, parseFloat(s.outlineWidth)]; }"
    )
    assert outline[0] != "none" and outline[1] >= 2, outline
    keyboard.press("Enter")
    form.settle()
    assert len(form.posts) == 1


def test_focused_input_has_a_visible_outline(form: Form) -> None:
    form.page.focus("#pan")
    style, width = form.page.evaluate(
        "() => { const s = getComputedStyle(document.getElementById('pan'));"
        " return [s.outlineStyle, parseFloat(s.outlineWidth)]; }"
    )
    assert style != "none" and width >= 2


def check_fits(form: Form, width: int, height: int) -> None:
    page = form.page
    assert page.evaluate("document.scrollingElement.scrollWidth") <= width
    pay = page.locator("#pay")
    pay.scroll_into_view_if_needed()
    box = pay.bounding_box()
    assert box is not None
    assert box["x"] >= 0 and box["x"] + box["width"] <= width, box
    assert box["y"] >= 0 and box["y"] + box["height"] <= height + 0.5, box
    assert box["height"] >= 44
    for selector in ("#pan", "#exp", "#cvc", "#name", "#email", "#phone"):
        field_box = page.locator(selector).bounding_box()
        assert field_box is not None
        assert field_box["height"] >= 44, (selector, field_box)
        assert field_box["x"] >= 0 and field_box["x"] + field_box["width"] <= width
    exp, cvc = page.locator("#exp").bounding_box(), page.locator("#cvc").bounding_box()
    assert exp is not None and cvc is not None
    assert abs(exp["y"] - cvc["y"]) < 1 and exp["x"] + exp["width"] <= cvc["x"]


def test_phone_width_shows_the_pay_button_without_horizontal_scrolling(browser: Browser) -> None:
    with open_form(browser, width=360, height=740) as form:
        check_fits(form, 360, 740)
        # Still fits with a long brand badge and every error shown.
        form.type("#pan", "5522042705066735")
        form.page.click("#pay")
        form.page.locator("#pay").scroll_into_view_if_needed()
        check_fits(form, 360, 740)
        brand = form.page.locator("#brand").bounding_box()
        pan = form.page.locator("#pan").bounding_box()
        assert brand is not None and pan is not None
        assert brand["x"] + brand["width"] <= pan["x"] + pan["width"]
        form.page.screenshot(path=screenshot_path("payform-360-errors"), full_page=True)


def test_widget_mode_fits_a_400px_iframe(browser: Browser) -> None:
    with open_form(browser, width=400, height=640, short=True) as form:
        form.fill_valid()
        check_fits(form, 400, 640)
        padding = form.page.evaluate(
            "parseFloat(getComputedStyle(document.querySelector('main')).paddingLeft)"
        )
        assert padding <= 16
        form.page.screenshot(path=screenshot_path("payform-widget"), full_page=True)


def test_desktop_card_is_centered_and_at_most_28rem(form: Form) -> None:
    box = form.page.locator("main").bounding_box()
    assert box is not None
    assert box["width"] <= 28 * 16
    assert abs(box["x"] - (1280 - box["x"] - box["width"])) <= 1
    form.fill_valid()
    form.page.screenshot(path=screenshot_path("payform-desktop"), full_page=True)


def test_works_under_a_strict_content_security_policy(browser: Browser) -> None:
    csp = (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    )
    files = {
        "/static/payform.js": (SCRIPT, "text/javascript"),
        "/static/payform.css": (STYLE, "text/css"),
    }
    html = page_html(
        head='<link rel="stylesheet" href="/static/payform.css">',
        body_end='<script src="/static/payform.js"></script>',
    )
    context = browser.new_context()
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)

    def serve(route: Route) -> None:
        path = route.request.url.removeprefix(ORIGIN).split("?")[0]
        if path in files:
            source, kind = files[path]
            route.fulfill(
                body=source.read_bytes(),
                content_type=kind,
                headers={"Content-Security-Policy": csp},
            )
        elif path == "/payform/":
            route.fulfill(
                body=html, content_type="text/html", headers={"Content-Security-Policy": csp}
            )
        else:
            route.fulfill(status=204)

    try:
        page.route(f"{ORIGIN}/**", serve)
        page.add_init_script(
            "document.addEventListener('securitypolicyviolation',"
            " e => console.error('CSP violation: ' + e.violatedDirective))"
        )
        page.goto(f"{ORIGIN}/payform/")
        page.locator("#pan").press_sequentially(AMEX)
        assert page.input_value("#pan") == "3775 145000 04820"
        assert page.locator("#brand").inner_text() == "AMEX"
        assert page.evaluate(
            "getComputedStyle(document.getElementById('pay')).backgroundColor"
        ) == ("rgb(0, 128, 95)")
        page.click("#pay")
        page.wait_for_timeout(200)
        assert page.get_attribute("#pan", "aria-invalid") is None
        assert page.get_attribute("#exp", "aria-invalid") == "true"
        assert problems == []
    finally:
        context.close()
