"""The cabinet's Notifications page (issue 8): the merchant's postLinks that need
attention, filters and pages, and sending one again, on SQLite and PostgreSQL.

Every test runs against a delivering gateway of its own (its worker on, a compressed
retry schedule: 0.2, 0.4, 0.6 s, so a postLink that keeps failing is given up after 4
attempts in about a second) and a real local receiver (tests/receiver.py): postLinks
go to it or to a closed local port, nothing leaves this machine.
"""

from __future__ import annotations

import html
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from markupsafe import escape
from playwright.sync_api import Browser

from tests.browser import chromium, screenshot_path, watched_page
from tests.cabinet_support import (
    DELIVERING,
    csrf_of,
    log_in,
    new_merchant,
    new_user,
    pay_as,
)
from tests.conftest import fresh_postgres
from tests.receiver import Receiver, running_receiver
from tests.support import Gateway, start_gateway
from tolem.cabinet.users import SANDBOX_EMAIL, SANDBOX_PASSWORD
from tolem.testing import free_port

PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}
#: Attempts before a postLink that keeps failing is given up (the schedule's 3, plus 1).
ATTEMPTS = 4
ROW = re.compile(
    r'<tr data-id="([^"]*)" data-state="([^"]*)" data-attempts="(\d+)" data-invoice="([^"]*)">'
    r"(.*?)</tr>",
    re.S,
)


# --- fixtures ------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def gw(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """A delivering gateway with a database of its own (the shared one must not send
    other tests' postLinks)."""
    data_dir = tmp_path_factory.mktemp("cabinet-notifications")
    if request.param == "sqlite":
        url = f"sqlite:///{data_dir / 'tolem.db'}"
        with start_gateway(data_dir, url, extra_env=DELIVERING) as gateway:
            yield gateway
        return
    with (
        fresh_postgres("tolem_cab_notify") as url,
        start_gateway(data_dir, url, extra_env=DELIVERING) as gateway,
    ):
        yield gateway


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with running_receiver(hang_seconds=8) as r:
        yield r


@pytest.fixture
def user(gw: Gateway) -> Iterator[httpx.Client]:
    """The test merchant's sandbox user, logged in, pages in English."""
    with gw.client() as client:
        assert log_in(client, SANDBOX_EMAIL, SANDBOX_PASSWORD).status_code == 303
        assert client.get("/cabinet/notifications", params={"lang": "en"}).status_code == 200
        yield client


# --- helpers -------------------------------------------------------------------------


def rows(client: httpx.Client, **params: str) -> list[dict[str, Any]]:
    """The rows of one page of the list, top to bottom."""
    page = client.get("/cabinet/notifications", params=params)
    assert page.status_code == 200, page.text
    return [
        {"id": i, "state": s, "attempts": int(a), "invoice": inv, "html": body}
        for i, s, a, inv, body in ROW.findall(page.text)
    ]


def wait_row(
    client: httpx.Client, invoice: str, state: str, attempts: int, timeout: float = 20
) -> dict[str, Any]:
    """Reload the page until the invoice's one notification is in ``state`` after at
    least ``attempts`` attempts."""
    deadline = time.monotonic() + timeout
    while True:
        found = rows(client, state="all", invoice=invoice)
        assert len(found) <= 1, found
        if found and found[0]["state"] == state and found[0]["attempts"] >= attempts:
            return found[0]
        assert time.monotonic() < deadline, f"{invoice}: {found}"
        time.sleep(0.05)


def failed_postlink(gw: Gateway, client: httpx.Client, link: str) -> tuple[str, dict[str, Any]]:
    """A payment whose postLink is given up on; its invoice and its row on the page."""
    invoice, paid = pay_as(gw, client, postLink=link)
    assert paid.status_code == 200, paid.text
    return invoice, wait_row(client, invoice, "failed", ATTEMPTS)


def closed_url(path: str = "") -> str:
    """A local address nothing listens on: every attempt is refused at once."""
    return f"http://127.0.0.1:{free_port()}/{path or uuid.uuid4().hex}"


def redeliver(client: httpx.Client, notification_id: str, **data: str) -> httpx.Response:
    return client.post(f"/cabinet/notifications/{notification_id}/redeliver", data=data)


def csrf(client: httpx.Client) -> str:
    return csrf_of(client.get("/cabinet/notifications"))


def message_of(page: httpx.Response) -> str:
    found = re.search(r'<p class="(?:notice|error)" id="message"[^>]*>(.*?)</p>', page.text)
    assert found is not None, page.text
    return html.unescape(found.group(1))


# --- the list ------------------------------------------------------------------------


def test_a_failing_postlink_is_listed_as_failed_and_redelivered(
    gw: Gateway, user: httpx.Client, receiver: Receiver
) -> None:
    path = f"/flaky/{ATTEMPTS}/{uuid.uuid4().hex}"  # 500 four times, then 200
    invoice, row = failed_postlink(gw, user, receiver.url(path))
    assert len(receiver.to(path)) == ATTEMPTS
    # By default the page shows what needs attention: this one is there.
    assert row["id"] in [r["id"] for r in rows(user)]
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row["html"], re.S)
    assert cells[1] == "payment"
    assert '<a href="/cabinet/transactions/' in cells[2] and f">{invoice}</a>" in cells[2]
    assert cells[3] == receiver.url(path)
    assert "failed" in cells[4] and cells[5] == str(ATTEMPTS)
    assert cells[6].strip() == "HTTP 500" and cells[7] == ""  # no attempt is due
    assert 'class="redeliver"' in row["html"]

    answer = redeliver(user, row["id"], csrf=csrf(user), back=f"invoice={invoice}&state=failed")
    assert answer.status_code == 303
    location = answer.headers["location"]
    assert location.startswith("/cabinet/notifications?outcome=ok&")
    assert f"invoice={invoice}" in location and "state=failed" in location  # the filter kept
    shown = user.get(location)
    assert message_of(shown) == "The notification will be sent again within seconds."
    # The receiver is fixed now: one new attempt, delivered.
    receiver.wait_for(path, ATTEMPTS + 1)
    done = wait_row(user, invoice, "delivered", ATTEMPTS + 1)
    assert done["attempts"] == ATTEMPTS + 1 and "HTTP 200" in done["html"]
    assert 'class="redeliver"' not in done["html"]
    assert row["id"] not in [r["id"] for r in rows(user)]  # needs no attention now
    assert [r["id"] for r in rows(user, state="delivered", invoice=invoice)] == [row["id"]]
    assert rows(user, state="failed", invoice=invoice) == []

    # A page out of date: the delivered one is not sent again, and the page says so.
    late = redeliver(user, row["id"], csrf=csrf(user))
    assert late.status_code == 303
    assert "outcome=error" in late.headers["location"]
    assert "already been delivered" in message_of(user.get(late.headers["location"]))
    time.sleep(0.5)  # the worker polls every 0.05 s: a new attempt would be here by now
    assert len(receiver.to(path)) == ATTEMPTS + 1
    assert wait_row(user, invoice, "delivered", 0)["attempts"] == ATTEMPTS + 1


def test_an_attempt_in_flight_is_retrying_with_its_next_time(
    gw: Gateway, user: httpx.Client, receiver: Receiver
) -> None:
    path = f"/hang/{uuid.uuid4().hex}"  # no answer within the 2 s timeout
    invoice, paid = pay_as(gw, user, postLink=receiver.url(path))
    assert paid.status_code == 200, paid.text
    receiver.wait_for(path)
    started = time.monotonic()  # the attempt runs for the 2 s timeout from about now
    [row] = rows(user, state="pending", invoice=invoice)
    assert row["state"] == "pending" and row["attempts"] == 1
    assert "retrying" in row["html"] and 'class="redeliver"' in row["html"]
    assert re.search(r'<td class="next"[^>]*>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d</td>', row["html"])
    assert rows(user, state="delivered", invoice=invoice) == []

    # "Redeliver" while that attempt runs: the same postLink is not POSTed a second
    # time at once (making it due now would let the worker claim it again), and the
    # page says why nothing was done.
    answer = redeliver(user, row["id"], csrf=csrf(user))
    assert answer.status_code == 303 and "outcome=error" in answer.headers["location"]
    assert "being sent right now" in message_of(user.get(answer.headers["location"]))
    time.sleep(0.5)  # the worker polls every 0.05 s: a second POST would be here by now
    assert time.monotonic() - started < 2, "too slow to tell: the attempt timed out"
    assert len(receiver.to(path)) == 1
    [still] = rows(user, state="pending", invoice=invoice)
    assert still["attempts"] == 1


def test_filters_pages_and_bad_queries(gw: Gateway) -> None:
    creds = new_merchant(gw, "Paged shop")
    email = new_user(gw, creds["clientId"])
    with gw.client() as client:
        assert log_in(client, email, "right-pass-1").status_code == 303
        made = []
        for _ in range(3):
            invoice, paid = pay_as(gw, client, creds=creds, postLink=closed_url())
            assert paid.status_code == 200, paid.text
            made.append(invoice)
        for invoice in made:
            wait_row(client, invoice, "failed", ATTEMPTS)
        # Newest first, one a page, each page's "older" link to the next: each once.
        seen: list[str] = []
        url = "/cabinet/notifications?state=all&limit=1&lang=en"
        while url:
            page = client.get(url)
            assert page.status_code == 200, page.text
            seen += [inv for _, _, _, inv, _ in ROW.findall(page.text)]
            older = re.search(r'<a href="([^"]+)" id="older">', page.text)
            url = html.unescape(older.group(1)) if older else ""
            if len(seen) > 1:
                assert 'id="newest"' in page.text
        assert seen == made[::-1]
        assert [r["invoice"] for r in rows(client, state="failed")] == made[::-1]
        assert rows(client, state="delivered") == [] and rows(client, state="pending") == []
        assert [r["invoice"] for r in rows(client, invoice=made[1])] == [made[1]]
        assert rows(client, invoice="000000000") == []
        assert "No notifications." in client.get("/cabinet/notifications?state=pending").text

        for params, text in [
            ({"state": "lost"}, "Unknown state in the filter"),
            ({"limit": "0"}, "limit must be a whole number from 1 to 200"),
            ({"limit": "ten"}, "limit must be a whole number from 1 to 200"),
            ({"before": "yesterday~x"}, "The page link is damaged"),
            ({"before": "2026-01-01T00:00:00~x"}, "The page link is damaged"),  # no zone
            ({"invoice": "12\x01"}, "characters that are not allowed"),
        ]:
            bad = client.get("/cabinet/notifications", params=params)
            assert bad.status_code == 400, params
            assert text in message_of(bad) and "<table" not in bad.text

        ru = client.get("/cabinet/notifications", params={"lang": "ru", "state": "failed"})
        assert "Уведомления (postLink)" in ru.text and "Отправить снова" in ru.text
        assert "не доставлено" in ru.text


def test_logged_out_is_sent_to_the_login(gw: Gateway) -> None:
    with gw.client() as client:
        assert client.get("/cabinet/notifications").headers["location"] == "/cabinet/login"
        answer = redeliver(client, str(uuid.uuid4()), csrf="x")
        assert answer.status_code == 303
        assert answer.headers["location"] == "/cabinet/login"


# --- refusals ------------------------------------------------------------------------


def test_redeliver_without_the_csrf_token_is_refused(
    gw: Gateway, user: httpx.Client, receiver: Receiver
) -> None:
    path = f"/status/500/{uuid.uuid4().hex}"
    invoice, row = failed_postlink(gw, user, receiver.url(path))
    for data, headers in [
        ({}, {}),
        ({"csrf": "not-the-token"}, {}),
        ({"csrf": csrf(user)}, {"Origin": "https://evil.example"}),
    ]:
        answer = user.post(
            f"/cabinet/notifications/{row['id']}/redeliver", data=data, headers=headers
        )
        assert answer.status_code == 403, answer.text
    time.sleep(0.5)  # a redelivery would have been attempted by now
    assert len(receiver.to(path)) == ATTEMPTS
    assert wait_row(user, invoice, "failed", 0)["attempts"] == ATTEMPTS


def test_another_merchants_user_cannot_see_or_redeliver_it(
    gw: Gateway, user: httpx.Client, receiver: Receiver
) -> None:
    path = f"/status/503/{uuid.uuid4().hex}"
    invoice, row = failed_postlink(gw, user, receiver.url(path))
    creds = new_merchant(gw, "Nosy shop")
    email = new_user(gw, creds["clientId"])
    with gw.client() as other:
        assert log_in(other, email, "right-pass-1").status_code == 303
        other.get("/cabinet/notifications", params={"lang": "en"})
        assert rows(other, state="all") == []
        assert rows(other, state="all", invoice=invoice) == []
        token = csrf(other)
        for notification_id in (row["id"], str(uuid.uuid4()), "x" * 37):
            answer = redeliver(other, notification_id, csrf=token)
            assert answer.status_code == 404, notification_id
            assert "Notification not found" in answer.text
    # The owner's own unknown id is "not found" too.
    assert redeliver(user, str(uuid.uuid4()), csrf=csrf(user)).status_code == 404
    time.sleep(0.5)
    assert len(receiver.to(path)) == ATTEMPTS
    assert wait_row(user, invoice, "failed", 0)["attempts"] == ATTEMPTS


def test_a_hostile_url_and_invoice_filter_are_shown_as_text(
    gw: Gateway, user: httpx.Client
) -> None:
    hostile = "<script>alert(1)</script>?q=\"'><img/src=x/onerror=alert(2)>"
    link = closed_url(hostile)
    invoice, row = failed_postlink(gw, user, link)
    page = user.get("/cabinet/notifications", params={"invoice": invoice})
    assert "<script>alert(1)" not in page.text and "<img/src=x" not in page.text
    shown = str(escape(link))  # what Jinja's autoescape makes of it
    assert shown in page.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in shown
    cell = re.search(r'<td class="url"[^>]*>(.*?)</td>', row["html"])
    assert cell is not None and cell.group(1) == shown

    searched = user.get("/cabinet/notifications", params={"invoice": '"><script>x()</script>'})
    assert searched.status_code == 200
    assert "<script>x()" not in searched.text
    assert 'value="&#34;&gt;&lt;script&gt;x()&lt;/script&gt;"' in searched.text


# --- in a browser --------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as b:
        yield b


def test_redeliver_in_a_browser_at_phone_width(
    browser: Browser, receiver: Receiver, tmp_path: Path
) -> None:
    with start_gateway(tmp_path, f"sqlite:///{tmp_path / 'tolem.db'}", extra_env=DELIVERING) as gw:
        path = f"/flaky/{ATTEMPTS}/{uuid.uuid4().hex}"
        with gw.client() as client:
            assert log_in(client, SANDBOX_EMAIL, SANDBOX_PASSWORD).status_code == 303
            invoice, row = failed_postlink(gw, client, receiver.url(path))

        page, problems = watched_page(browser, DESKTOP)
        page.goto(f"{gw.base_url}/cabinet/login?lang=en")
        page.fill("#email", SANDBOX_EMAIL)
        page.fill("#password", SANDBOX_PASSWORD)
        page.click("#submit")
        page.wait_for_selector("#logout")  # the first page after a login
        page.click("#nav-notifications")
        page.wait_for_url("**/cabinet/notifications")
        assert page.locator("h1").inner_text() == "Notifications (postLink)"
        assert page.locator("#nav-notifications").get_attribute("aria-current") == "page"
        line = page.locator(f"#notifications tr[data-id='{row['id']}']")
        assert line.get_attribute("data-state") == "failed"
        assert line.locator(".invoice").inner_text() == invoice
        page.screenshot(path=screenshot_path("cabinet-notifications-desktop"), full_page=True)

        page.set_viewport_size(PHONE)  # type: ignore[arg-type]
        page.reload()
        widths = page.evaluate(
            "() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
        )
        assert widths[0] <= widths[1], widths  # the table scrolls, not the page
        line.locator("button.redeliver").click()
        page.wait_for_selector("#message")
        assert page.locator("#message").inner_text() == (
            "The notification will be sent again within seconds."
        )
        page.screenshot(path=screenshot_path("cabinet-notifications-phone"), full_page=True)
        receiver.wait_for(path, ATTEMPTS + 1)
        deadline = time.monotonic() + 20
        while page.locator(f"tr[data-id='{row['id']}'][data-state='delivered']").count() == 0:
            assert time.monotonic() < deadline, page.content()
            page.wait_for_timeout(50)
            page.goto(f"{gw.base_url}/cabinet/notifications?state=delivered")
        assert problems == []
        page.close()
