"""3-D Secure in real Chromium: a shop page, the document's form, the ACS, confirm."""

from __future__ import annotations

from urllib.parse import quote

from tests.browser import chromium, screenshot_path
from tests.merchant_site import running_shop
from tests.secure3d_support import VISA_3DS
from tests.support import Gateway


def test_cardholder_passes_3ds_and_lands_on_success_then_fails_with_wrong_codes(
    gateway: Gateway, backend: str
) -> None:
    card = quote(",".join(VISA_3DS))
    with running_shop(gateway) as shop, chromium() as browser:
        page = browser.new_page()

        # 1. The right code: the success page.
        page.goto(f"{shop}/checkout?card={card}&language=eng")
        page.wait_for_url("**/acs/pa")
        assert page.locator("#merchant").inner_text() == "ePay test merchant"
        assert page.locator("#card").inner_text() == f"{VISA_3DS[0][:6]}...{VISA_3DS[0][-4:]}"
        assert "100.00" in page.locator("#amount").inner_text()
        page.screenshot(path=screenshot_path(f"acs-en-{backend}"))
        page.fill("#code", page.locator("#sandbox-code").inner_text())
        page.click("#confirm")
        page.wait_for_url("**/payform/success.html?*")
        assert page.locator("#result").inner_text() == "Payment successful"
        assert page.locator("#reference").inner_text().isdigit()
        page.screenshot(path=screenshot_path(f"success-en-{backend}"))

        # 2. A wrong code three times: the error page with reason 499, in Russian.
        page.goto(f"{shop}/checkout?card={card}&language=rus")
        page.wait_for_url("**/acs/pa")
        right = page.locator("#sandbox-code").inner_text()
        wrong = f"{(int(right[0]) + 1) % 10}{right[1:]}"
        for left in ("2", "1"):
            page.fill("#code", wrong)
            page.click("#confirm")
            page.wait_for_selector("#error")
            assert left in page.locator("#error").inner_text()
        page.fill("#code", wrong)
        page.click("#confirm")
        page.wait_for_url("**/payform/?*")
        assert page.locator("#result").inner_text() == "Оплата не прошла"
        assert page.locator("#reason").inner_text().startswith("499")
        page.screenshot(path=screenshot_path(f"error-ru-{backend}"))
