"""The cabinet's language links (issue 8), on SQLite and PostgreSQL: a page's RU/EN
links keep its filters; the answer to a POST links to the page it belongs to (a link
cannot repeat a POST), and a message signed in the old language is left behind."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator

import httpx
import pytest

from tests.cabinet_support import ask, log_in, new_user, operate, pay_as
from tests.support import Gateway

LINK = re.compile(r'<a href="([^"]*)" id="lang-(ru|en)"')


@pytest.fixture
def client(gateway: Gateway) -> Iterator[httpx.Client]:
    with gateway.client() as c:
        yield c


def links(page: httpx.Response) -> dict[str, str]:
    return {code: html.unescape(href) for href, code in LINK.findall(page.text)}


def test_language_links_keep_the_page_and_its_filters(
    gateway: Gateway, client: httpx.Client
) -> None:
    _, paid = pay_as(gateway, client)
    tx_id = paid.json()["id"]
    user = gateway.client()
    assert log_in(user, new_user(gateway), "right-pass-1").status_code == 303
    listed = user.get("/cabinet/transactions", params={"status": "AUTH", "lang": "ru"})
    assert links(listed) == {
        "ru": "/cabinet/transactions?status=AUTH&lang=ru",
        "en": "/cabinet/transactions?status=AUTH&lang=en",
    }
    switched = user.get(links(listed)["en"])
    assert switched.status_code == 200 and "<h1>Transactions</h1>" in switched.text
    # The confirmation page answers a POST: its links lead to the transaction.
    question = ask(user, tx_id, "charge", "10")
    assert question.status_code == 200, question.text
    assert links(question)["ru"] == f"/cabinet/transactions/{tx_id}?lang=ru"
    assert user.get(links(question)["ru"]).status_code == 200
    # After the operation (in Russian now: the link chose it), the page with its signed
    # message links to itself without the message, which is in the old language.
    _, done = operate(user, tx_id, "charge", "10")
    shown = user.get(done.headers["location"])
    assert "Списано 10.00 KZT" in shown.text and "sig=" in done.headers["location"]
    assert links(shown)["en"] == f"/cabinet/transactions/{tx_id}?lang=en"
    user.close()


def test_the_login_pages_links(gateway: Gateway) -> None:
    with gateway.client() as anonymous:
        form = anonymous.get("/cabinet/login", params={"lang": "en"})
        assert links(form)["ru"] == "/cabinet/login?lang=ru"
        refused = log_in(anonymous, "nobody@shop.kz", "wrong-pass")
        assert refused.status_code == 401
        assert links(refused)["en"] == "/cabinet/login?lang=en"
