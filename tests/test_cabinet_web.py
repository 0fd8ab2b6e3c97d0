"""The merchant cabinet over HTTP (issue 8, first slice): login, sessions, CSRF, the
transactions list, on SQLite and PostgreSQL."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal

import httpx
import pytest
from sqlalchemy import select, update

from tests.cabinet_support import csrf_of, log_in, new_merchant, new_user, pay_as
from tests.support import Gateway
from tolem.cabinet.models import CabinetSession
from tolem.cabinet.sessions import IDLE_TIMEOUT, session_id
from tolem.cabinet.users import SANDBOX_EMAIL, SANDBOX_PASSWORD
from tolem.db.base import utcnow
from tolem.db.engine import Database
from tolem.payments.models import Transaction

DECLINED = ("5578342710750560", "0920", "254")  # 484, insufficient funds


@pytest.fixture
def client(gateway: Gateway) -> Iterator[httpx.Client]:
    with gateway.client() as c:
        yield c


@pytest.fixture
def database(gateway: Gateway) -> Iterator[Database]:
    db = Database(gateway.database_url)
    yield db
    db.dispose()


def logged_in(
    gw: Gateway, email: str = SANDBOX_EMAIL, password: str = SANDBOX_PASSWORD
) -> httpx.Client:
    client = gw.client()
    response = log_in(client, email, password)
    assert response.status_code == 303, response.text
    return client


def listed(client: httpx.Client, **params: str) -> list[str]:
    """The invoices on one page of the list, top to bottom."""
    page = client.get("/cabinet/transactions", params=params)
    assert page.status_code == 200, page.text
    return re.findall(r'<tr data-invoice="([^"]*)"', page.text)


def set_cookies(response: httpx.Response) -> dict[str, str]:
    return {h.split("=", 1)[0]: h for h in response.headers.get_list("set-cookie")}


def test_login_sets_a_strict_cookie_and_lists_a_payment(
    gateway: Gateway, client: httpx.Client
) -> None:
    invoice, paid = pay_as(gateway, client)
    assert paid.status_code == 200, paid.text
    assert client.get("/cabinet/transactions").headers["location"] == "/cabinet/login"
    assert client.get("/cabinet/").headers["location"] == "/cabinet/login"

    response = log_in(client, SANDBOX_EMAIL, SANDBOX_PASSWORD)
    assert (response.status_code, response.headers["location"]) == (303, "/cabinet/")
    cookie = set_cookies(response)["tolem_cabinet"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/cabinet" in cookie
    assert "secure" not in cookie  # plain http here; https gets Secure
    home = client.get("/cabinet/")
    assert (home.status_code, home.headers["location"]) == (303, "/cabinet/transactions")
    page = client.get("/cabinet/transactions")
    assert page.status_code == 200
    csp = page.headers["content-security-policy"]
    assert "form-action 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "script-src 'nonce-" in csp and page.headers["cache-control"] == "no-store"
    # Not no-referrer: Chromium would send "Origin: null" with the page's POSTs.
    assert page.headers["referrer-policy"] == "same-origin"
    row = re.search(rf'<tr data-invoice="{invoice}".*?</tr>', page.text, re.S)
    assert row is not None
    assert "100.00 KZT" in row.group(0) and "AUTH" in row.group(0)
    assert paid.json()["reference"] in row.group(0) and "440563...5096" in row.group(0)
    # Logged in, the login page sends you on.
    assert client.get("/cabinet/login").headers["location"] == "/cabinet/transactions"


def test_a_wrong_password_is_401_and_sets_no_session(
    gateway: Gateway, client: httpx.Client
) -> None:
    email = new_user(gateway)
    client.get("/cabinet/login", params={"lang": "en"})
    response = log_in(client, email, "wrong-pass")
    assert response.status_code == 401
    assert "Wrong email or password" in response.text
    assert "tolem_cabinet" not in set_cookies(response)
    assert "tolem_cabinet" not in client.cookies
    unknown = log_in(client, "nobody@shop.kz", "wrong-pass")
    assert unknown.status_code == 401 and "Wrong email or password" in unknown.text
    ru = gateway.client()
    assert "Неверный email или пароль" in log_in(ru, email, "wrong-pass").text
    ru.close()


def test_three_wrong_passwords_lock_the_account(gateway: Gateway, client: httpx.Client) -> None:
    email = new_user(gateway)
    client.get("/cabinet/login", params={"lang": "en"})
    assert log_in(client, email, "wrong-pass").status_code == 401
    assert log_in(client, email, "wrong-pass").status_code == 401
    third = log_in(client, email, "wrong-pass")
    assert third.status_code == 423
    match = re.search(
        r"Account locked after three wrong passwords; try again after (\d\d:\d\d) UTC", third.text
    )
    assert match is not None, third.text
    expected = (utcnow() + timedelta(minutes=15)).strftime("%H:%M")
    earlier = (utcnow() + timedelta(minutes=14)).strftime("%H:%M")
    assert match.group(1) in (expected, earlier)
    right = log_in(client, email, "right-pass-1")
    assert right.status_code == 423 and "Account locked" in right.text
    assert "tolem_cabinet" not in client.cookies


def test_posts_without_the_csrf_token_are_refused(gateway: Gateway, client: httpx.Client) -> None:
    # Login: the double-submit cookie and field must both be there and agree.
    fresh = gateway.client()
    no_cookie = fresh.post(
        "/cabinet/login",
        data={"csrf": "x" * 43, "email": SANDBOX_EMAIL, "password": SANDBOX_PASSWORD},
    )
    assert no_cookie.status_code == 403 and "tolem_cabinet" not in fresh.cookies
    fresh.close()
    form = client.get("/cabinet/login")
    for token in ("", "not-the-token"):
        refused = client.post(
            "/cabinet/login",
            data={"csrf": token, "email": SANDBOX_EMAIL, "password": SANDBOX_PASSWORD},
        )
        assert refused.status_code == 403
    assert "tolem_cabinet" not in client.cookies
    assert log_in(client, SANDBOX_EMAIL, SANDBOX_PASSWORD).status_code == 303
    # Logout: the session's own token.
    assert client.post("/cabinet/logout").status_code == 403
    assert client.post("/cabinet/logout", data={"csrf": csrf_of(form)}).status_code == 403
    assert client.get("/cabinet/transactions").status_code == 200  # still logged in


def test_a_post_from_another_origin_is_refused(gateway: Gateway, client: httpx.Client) -> None:
    evil = {"Origin": "https://evil.example"}
    assert log_in(client, SANDBOX_EMAIL, SANDBOX_PASSWORD, **evil).status_code == 403
    assert log_in(client, SANDBOX_EMAIL, SANDBOX_PASSWORD, Origin="null").status_code == 403
    cross = log_in(client, SANDBOX_EMAIL, SANDBOX_PASSWORD, **{"Sec-Fetch-Site": "cross-site"})
    assert cross.status_code == 403
    assert "tolem_cabinet" not in client.cookies
    response = log_in(client, SANDBOX_EMAIL, SANDBOX_PASSWORD, Origin=gateway.base_url)
    assert response.status_code == 303
    csrf = csrf_of(client.get("/cabinet/transactions"))
    assert client.post("/cabinet/logout", data={"csrf": csrf}, headers=evil).status_code == 403
    assert client.get("/cabinet/transactions").status_code == 200


def test_logout_ends_the_session(
    gateway: Gateway, client: httpx.Client, database: Database
) -> None:
    assert log_in(client, SANDBOX_EMAIL, SANDBOX_PASSWORD).status_code == 303
    old = client.cookies["tolem_cabinet"]
    with database.read() as session:
        row = session.get(CabinetSession, session_id(old))
        assert row is not None and row.csrf_token != old and row.id != old
        assert row.expires_at - row.created_at == timedelta(hours=8)
    csrf = csrf_of(client.get("/cabinet/transactions"))
    out = client.post("/cabinet/logout", data={"csrf": csrf})
    assert (out.status_code, out.headers["location"]) == (303, "/cabinet/login")
    assert "max-age=0" in set_cookies(out)["tolem_cabinet"].lower()
    with database.read() as session:
        assert session.get(CabinetSession, session_id(old)) is None
    replay = gateway.client(cookies={"tolem_cabinet": old})
    again = replay.get("/cabinet/transactions")
    assert (again.status_code, again.headers["location"]) == (303, "/cabinet/login")
    replay.close()


def test_another_merchant_never_sees_these_transactions(
    gateway: Gateway, client: httpx.Client
) -> None:
    mine, paid = pay_as(gateway, client)
    assert paid.status_code == 200, paid.text
    creds = new_merchant(gateway)
    theirs, paid = pay_as(gateway, client, creds=creds)
    assert paid.status_code == 200, paid.text
    email = new_user(gateway, creds["clientId"])
    other = logged_in(gateway, email, "right-pass-1")
    assert listed(other) == [theirs]
    assert listed(other, invoice=mine) == []
    assert listed(other, invoice=theirs) == [theirs]
    assert mine not in other.get("/cabinet/transactions", params={"invoice": mine}).text.replace(
        f'value="{mine}"', ""
    )
    other.close()
    test_user = logged_in(gateway)
    assert theirs not in listed(test_user) and listed(test_user, invoice=theirs) == []
    assert listed(test_user, invoice=mine) == [mine]
    test_user.close()


def test_the_invoice_and_status_filters(gateway: Gateway, client: httpx.Client) -> None:
    good, paid = pay_as(gateway, client)
    assert paid.status_code == 200, paid.text
    bad, declined = pay_as(gateway, client, card=DECLINED)
    assert declined.status_code == 400, declined.text
    user = logged_in(gateway)
    assert listed(user, invoice=good) == [good]
    assert listed(user, invoice=good[:-1]) == []  # exact, not a prefix
    assert listed(user, invoice=f" {bad} ") == [bad]
    failed = listed(user, status="FAILED")
    assert bad in failed and good not in failed
    assert good in listed(user, status="AUTH") and bad not in listed(user, status="AUTH")
    assert listed(user, invoice=good, status="FAILED") == []
    assert listed(user, invoice=bad, status="FAILED") == [bad]
    assert good in listed(user, status="nonsense")  # an unknown status filters nothing
    page = user.get("/cabinet/transactions", params={"status": "FAILED"})
    assert '<option value="FAILED" selected>' in page.text
    user.close()


def test_pages_of_fifty_walk_back_by_keyset(gateway: Gateway, database: Database) -> None:
    creds = new_merchant(gateway, "Busy shop")
    start = utcnow().replace(microsecond=0) - timedelta(days=1)
    invoices = [f"7{n:011d}" for n in range(55)]
    with database.write() as session:
        for n, invoice in enumerate(invoices):
            # Pairs share a timestamp: the id breaks the tie, and no row is lost or doubled.
            session.add(
                Transaction(
                    merchant_id=creds["merchantId"],
                    terminal_id=creds["terminalId"],
                    invoice_id=invoice,
                    amount=Decimal(n + 1),
                    currency="KZT",
                    status="CHARGE",
                    created_at=start + timedelta(seconds=n // 2),
                )
            )
    with database.read() as session:
        expected = list(
            session.scalars(
                select(Transaction.invoice_id)
                .where(Transaction.merchant_id == creds["merchantId"])
                .order_by(Transaction.created_at.desc(), Transaction.id.desc())
            )
        )
    user = logged_in(gateway, new_user(gateway, creds["clientId"]), "right-pass-1")
    first = user.get("/cabinet/transactions")
    page_one = re.findall(r'<tr data-invoice="([^"]*)"', first.text)
    assert page_one == expected[:50]
    older = re.search(r'<a href="([^"]+)" id="older">', first.text)
    assert older is not None
    second = user.get(older.group(1).replace("&amp;", "&"))
    assert re.findall(r'<tr data-invoice="([^"]*)"', second.text) == expected[50:]
    assert 'id="older"' not in second.text and 'id="newest"' in second.text

    walked: list[str] = []
    url = "/cabinet/transactions?limit=7"
    while True:
        page = user.get(url)
        walked += re.findall(r'<tr data-invoice="([^"]*)"', page.text)
        found = re.search(r'<a href="([^"]+)" id="older">', page.text)
        if found is None:
            break
        url = found.group(1).replace("&amp;", "&")
        assert "limit=7" in url
    assert walked == expected
    assert listed(user, limit="500") == expected  # capped at 200, and 55 fit
    assert len(listed(user, limit="0")) == 1
    assert listed(user, before="garbage") == expected[:50]
    user.close()


def test_pages_escape_what_they_show(gateway: Gateway, client: httpx.Client) -> None:
    script = "<script>alert(1)</script>"
    invoice, paid = pay_as(gateway, client, description=script)
    assert paid.status_code == 200, paid.text
    user = logged_in(gateway)
    page = user.get("/cabinet/transactions", params={"invoice": invoice})
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert script not in page.text
    reflected = user.get("/cabinet/transactions", params={"invoice": '"><script>x</script>'})
    assert "<script>x" not in reflected.text and "&#34;&gt;&lt;script&gt;x" in reflected.text
    user.close()
    wrong = log_in(client, '"><script>y</script>@shop.kz', "wrong-pass")
    assert wrong.status_code == 401 and "<script>y" not in wrong.text


def test_an_expired_or_idle_session_is_refused_and_deleted(
    gateway: Gateway, client: httpx.Client, database: Database
) -> None:
    for column, value in (
        ("expires_at", utcnow() - timedelta(seconds=1)),
        ("last_seen_at", utcnow() - IDLE_TIMEOUT - timedelta(seconds=1)),
    ):
        user = logged_in(gateway)
        cookie = user.cookies["tolem_cabinet"]
        assert user.get("/cabinet/transactions").status_code == 200
        with database.write() as session:
            session.execute(
                update(CabinetSession)
                .where(CabinetSession.id == session_id(cookie))
                .values({column: value})
            )
        refused = user.get("/cabinet/transactions")
        assert (refused.status_code, refused.headers["location"]) == (303, "/cabinet/login"), column
        with database.read() as session:
            assert session.get(CabinetSession, session_id(cookie)) is None
        user.close()
