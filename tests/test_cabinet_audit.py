"""Who ran an operation, and refusals in the user's language (issue 8), on SQLite and
PostgreSQL: an operation from the API says "api", one from the cabinet names its user,
on the transaction's page and in the database; a Russian page gives the reason in
Russian, an English page in English, and the API keeps ePay's English message."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from tests.cabinet_support import log_in, new_user, operate, pay_as
from tests.support import Gateway, query
from tests.support import token as api_token


@pytest.fixture
def client(gateway: Gateway) -> Iterator[httpx.Client]:
    with gateway.client() as c:
        yield c


def _user(gw: Gateway, email: str, lang: str) -> httpx.Client:
    user = gw.client()
    assert log_in(user, email, "right-pass-1").status_code == 303
    assert user.get("/cabinet/transactions", params={"lang": lang}).status_code == 200
    return user


def _message(response: httpx.Response, user: httpx.Client) -> str:
    assert response.status_code == 303, response.text
    page = user.get(response.headers["location"])
    found = re.search(r'id="message"[^>]*>([^<]*)<', page.text)
    assert found is not None, page.text
    return found.group(1)


def _performed_by(gw: Gateway, tx_id: str) -> list[tuple[str, str]]:
    rows = query(
        gw.database_url,
        "SELECT kind, performed_by FROM operations WHERE transaction_id = :t ORDER BY created_at",
        t=tx_id,
    )
    return [(row.kind, row.performed_by) for row in rows]


def test_operations_record_who_ran_them(gateway: Gateway, client: httpx.Client) -> None:
    email = new_user(gateway)
    _, paid = pay_as(gateway, client)
    tx_id = paid.json()["id"]
    headers = {"Authorization": f"Bearer {api_token(client)['access_token']}"}
    charged = client.post(f"/operation/{tx_id}/charge", headers=headers)
    assert charged.status_code == 200, charged.text
    user = _user(gateway, email, "en")
    assert _message(operate(user, tx_id, "refund", "25")[1], user) == "Refunded 25.00 KZT"
    assert _performed_by(gateway, tx_id) == [("charge", "api"), ("refund", f"cabinet:{email}")]
    page = user.get(f"/cabinet/transactions/{tx_id}").text
    shown = re.findall(r'<tr data-kind="(\w+)".*?<td class="by">([^<]*)</td>', page)
    assert shown == [("charge", "api"), ("refund", f"cabinet:{email}")]
    user.close()


@pytest.mark.parametrize(
    ("lang", "expected"),
    [
        ("ru", "Операция отклонена: возврат не меньше 10 KZT"),
        ("en", "Operation refused: a refund is at least 10 KZT"),
    ],
)
def test_a_refusal_speaks_the_pages_language(
    gateway: Gateway, client: httpx.Client, lang: str, expected: str
) -> None:
    email = new_user(gateway)
    _, paid = pay_as(gateway, client)
    tx_id = paid.json()["id"]
    user = _user(gateway, email, lang)
    assert operate(user, tx_id, "charge", "50")[1].status_code == 303
    assert _message(operate(user, tx_id, "refund", "5")[1], user) == expected
    # The API still answers in ePay's English.
    headers = {"Authorization": f"Bearer {api_token(client)['access_token']}"}
    refused = client.post(f"/operation/{tx_id}/refund", headers=headers, params={"amount": "5"})
    assert refused.status_code == 400
    assert refused.json()["message"] == "a refund is at least 10 KZT"
    user.close()
