"""The merchant cabinet over HTTP (issue 8): login, sessions, CSRF, the transactions
list, one transaction's page and its charge, cancel and refund, on SQLite and PostgreSQL."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select, update

from tests.cabinet_support import (
    api_status,
    ask,
    confirm_fields,
    csrf_of,
    delivering_gateway,
    log_in,
    new_merchant,
    new_user,
    operate,
    pay_as,
)
from tests.receiver import running_receiver
from tests.support import Gateway, query
from tests.support import token as api_token
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
    assert (home.status_code, home.headers["location"]) == (303, "/cabinet/dashboard")
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
    assert client.get("/cabinet/login").headers["location"] == "/cabinet/"


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
    # The page repeats only the typed filter (its field, its language links).
    searched = other.get("/cabinet/transactions", params={"invoice": mine}).text
    assert mine not in re.sub(rf'value="{mine}"|\?invoice={mine}&amp;lang=\w+', "", searched)
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
    unknown = user.get("/cabinet/transactions", params={"status": "nonsense", "lang": "en"})
    assert unknown.status_code == 400 and "There is no such status." in unknown.text
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
    assert user.get("/cabinet/transactions", params={"before": "garbage"}).status_code == 400
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


# --- one transaction, and operations (issue 8, second slice) ----------------------------


def english(
    gw: Gateway, email: str = SANDBOX_EMAIL, password: str = SANDBOX_PASSWORD
) -> httpx.Client:
    user = logged_in(gw, email, password)
    assert user.get("/cabinet/transactions", params={"lang": "en"}).status_code == 200
    return user


def api_operate(client: httpx.Client, tx_id: str, kind: str, **params: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {api_token(client)['access_token']}"}
    return client.post(f"/operation/{tx_id}/{kind}", headers=headers, params=params)


def rows_of(page: httpx.Response, table: str) -> list[str]:
    found = re.search(rf'<table id="{table}".*?</table>', page.text, re.S)
    assert found is not None, page.text
    return re.findall(r'<tr data-kind="([^"]*)"', found.group(0))


def flash(response: httpx.Response, user: httpx.Client) -> str:
    """Follow a 303 back to the detail page; its message."""
    assert response.status_code == 303, response.text
    page = user.get(response.headers["location"])
    assert page.status_code == 200, page.text
    found = re.search(r'id="message"[^>]*>([^<]*)<', page.text)
    assert found is not None, page.text
    return found.group(1)


def test_the_detail_page_shows_fields_history_operations_and_postlinks(
    gateway: Gateway, client: httpx.Client
) -> None:
    invoice, paid = pay_as(gateway, client, description="Детали <i>заказа</i>")
    assert paid.status_code == 200, paid.text
    tx_id = paid.json()["id"]
    charged = api_operate(client, tx_id, "charge", amount="60")
    assert charged.status_code == 200, charged.text
    user = english(gateway)
    listing = user.get("/cabinet/transactions", params={"invoice": invoice})
    assert f'<a href="/cabinet/transactions/{tx_id}">{invoice}</a>' in listing.text
    page = user.get(f"/cabinet/transactions/{tx_id}")
    assert page.status_code == 200, page.text
    assert page.headers["cache-control"] == "no-store"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    body = paid.json()
    for field, value in (
        ("invoice", invoice),
        ("amount", "100.00 KZT"),
        ("charged", "60.00 KZT"),
        ("refunded", "0.00 KZT"),
        ("status", "CHARGE"),
        ("reference", body["reference"]),
        ("approval", body["approvalCode"]),
        ("reason-code", "0"),
        ("secure", "no"),
        ("account", "uuid000001"),
        ("email", "jj@example.com"),
        ("phone", "77777777777"),
        ("description", "Детали &lt;i&gt;заказа&lt;/i&gt;"),
    ):
        assert f'<dd id="f-{field}">{value}</dd>' in page.text, field
    assert "440563...5096" in page.text and "<i>заказа" not in page.text
    history = rows_of(page, "history")
    assert history[-1] == "charge" and len(history) >= 2, history
    assert rows_of(page, "operations") == ["charge"]
    assert 'data-state="done"' in page.text and charged.json()["reference"] in page.text
    events = re.findall(r'<section class="postlink" data-event="([^"]*)"', page.text)
    assert events == ["payment", "charge"]
    assert "https://testmerchant/order/1123" in page.text
    assert "No attempt yet." in page.text  # this gateway sends nothing
    # CHARGE with 60 left: only the refund form, offering what is left.
    assert 'id="refund-amount" name="amount" value="60.00"' in page.text
    assert 'id="charge-form"' not in page.text and 'id="cancel-form"' not in page.text
    user.close()


def test_postlink_attempts_are_shown(tmp_path: Path) -> None:
    with running_receiver() as receiver, delivering_gateway(tmp_path) as gw, gw.client() as c:
        link = receiver.url(f"/ok/{uuid.uuid4().hex}")
        failing = receiver.url(f"/status/500/{uuid.uuid4().hex}")
        _, paid = pay_as(gw, c, postLink=link, failurePostLink=failing)
        assert paid.status_code == 200, paid.text
        receiver.wait_for(link.removeprefix(receiver.base_url))
        user = english(gw)
        deadline = time.monotonic() + 20
        while True:
            page = user.get(f"/cabinet/transactions/{paid.json()['id']}")
            if 'data-outcome="delivered" data-http="200"' in page.text:
                break
            assert time.monotonic() < deadline, page.text
            time.sleep(0.05)
        assert re.search(r'data-event="payment" data-state="delivered"', page.text)
        assert re.search(
            r"<td>1</td><td>[-0-9 :]+</td><td class=\"text\">200 \(delivered\)", page.text
        )
        assert re.search(r'<td class="num">\d+ ms</td>', page.text)
        # An operation from the cabinet is announced like one from the API.
        _, done = operate(user, paid.json()["id"], "charge", "100")
        assert flash(done, user) == "Charged 100.00 KZT"
        assert [
            r.json()["code"] for r in receiver.wait_for(link.removeprefix(receiver.base_url), 2)
        ] == ["ok", "ok"]
        user.close()


def test_another_merchants_transaction_is_not_found(gateway: Gateway, client: httpx.Client) -> None:
    creds = new_merchant(gateway)
    theirs, paid = pay_as(gateway, client, creds=creds, description="their-secret-order")
    assert paid.status_code == 200, paid.text
    tx_id = paid.json()["id"]
    user = english(gateway)
    csrf = csrf_of(user.get("/cabinet/transactions"))
    for url in (tx_id, str(uuid.uuid4()), "x" * 80, "%00"):
        page = user.get(f"/cabinet/transactions/{url}")
        assert page.status_code == 404, url
        assert "Transaction not found" in page.text
    answers = [
        user.get(f"/cabinet/transactions/{tx_id}"),
        user.post(f"/cabinet/transactions/{tx_id}/cancel", data={"csrf": csrf}),
        user.post(f"/cabinet/transactions/{tx_id}/charge", data={"csrf": csrf, "amount": "100"}),
        user.post(
            f"/cabinet/transactions/{tx_id}/cancel/confirm",
            data={"csrf": csrf, "confirmation": "0" * 64},
        ),
    ]
    for answer in answers:
        assert answer.status_code == 404
        for secret in (theirs, "their-secret-order", paid.json()["reference"], "AUTH"):
            assert secret not in answer.text
    [row] = query(gateway.database_url, "SELECT status FROM transactions WHERE id = :t", t=tx_id)
    assert row.status == "AUTH"
    user.close()


def test_charge_then_partial_refund_through_the_cabinet(
    gateway: Gateway, client: httpx.Client
) -> None:
    invoice, paid = pay_as(gateway, client)
    assert paid.status_code == 200, paid.text
    tx_id = paid.json()["id"]
    user = english(gateway)
    page = user.get(f"/cabinet/transactions/{tx_id}")
    assert 'id="charge-amount" name="amount" value="100.00"' in page.text
    assert 'id="cancel-form"' in page.text and 'id="refund-form"' not in page.text

    question, done = operate(user, tx_id, "charge", "80")
    assert "Confirm charge of 80.00 KZT?" in question.text
    assert api_status(client, invoice)["statusName"] == "CHARGE"
    assert flash(done, user) == "Charged 80.00 KZT"

    question, done = operate(user, tx_id, "refund", "30,00")
    assert "Confirm refund of 30.00 KZT?" in question.text
    assert flash(done, user) == "Refunded 30.00 KZT"
    status = api_status(client, invoice)
    assert (status["statusName"], status["payoutAmount"]) == ("CHARGE", 50)
    # The same confirmation again does nothing: the transaction has changed since.
    again = user.post(
        f"/cabinet/transactions/{tx_id}/refund/confirm", data=confirm_fields(question)
    )
    assert again.status_code == 400 and "The confirmation does not match" in again.text
    assert api_status(client, invoice)["payoutAmount"] == 50

    page = user.get(f"/cabinet/transactions/{tx_id}")
    assert rows_of(page, "operations") == ["charge", "refund"]
    assert rows_of(page, "history")[-2:] == ["charge", "refund"]
    assert 'id="refund-amount" name="amount" value="50.00"' in page.text
    # The API's rules and its postLinks, exactly as for the API's own operations.
    kinds = query(
        gateway.database_url,
        "SELECT event FROM notifications WHERE transaction_id = :t ORDER BY created_at",
        t=tx_id,
    )
    assert [k.event for k in kinds] == ["payment", "charge", "refund"]
    # The rest, then nothing is left: no form.
    _, done = operate(user, tx_id, "refund", "50")
    assert flash(done, user) == "Refunded 50.00 KZT"
    assert api_status(client, invoice)["statusName"] == "REFUND"
    assert 'id="actions"' not in user.get(f"/cabinet/transactions/{tx_id}").text
    # A form from an older page: refused before any confirmation is shown.
    late = ask(user, tx_id, "refund", "10")
    assert late.status_code == 409 and 'id="confirm-form"' not in late.text
    assert "This operation is not available now: the transaction is REFUND." in late.text
    user.close()


def test_cancel_through_the_cabinet_in_russian(gateway: Gateway, client: httpx.Client) -> None:
    invoice, paid = pay_as(gateway, client)
    user = logged_in(gateway)
    question, done = operate(user, paid.json()["id"], "cancel")
    assert "Подтвердить отмену платежа на 100.00 KZT?" in question.text
    assert flash(done, user) == "Платёж отменён"
    assert api_status(client, invoice)["statusName"] == "CANCEL"
    user.close()


def test_a_refund_above_the_charge_is_refused_and_changes_nothing(
    gateway: Gateway, client: httpx.Client
) -> None:
    invoice, paid = pay_as(gateway, client)
    tx_id = paid.json()["id"]
    user = english(gateway)
    assert flash(operate(user, tx_id, "charge", "50")[1], user) == "Charged 50.00 KZT"
    question, done = operate(user, tx_id, "refund", "60")
    assert "Confirm refund of 60.00 KZT?" in question.text
    message = flash(done, user)
    assert message == "Operation refused: the refunds would exceed the amount charged"
    refused = operate(user, tx_id, "refund", "5")[1]
    assert flash(refused, user) == "Operation refused: a refund is at least 10 KZT"
    status = api_status(client, invoice)
    assert (status["statusName"], status["payoutAmount"]) == ("CHARGE", 50)
    [row] = query(
        gateway.database_url,
        "SELECT amount_refunded, amount_refund_pending FROM transactions WHERE id = :t",
        t=tx_id,
    )
    assert (row.amount_refunded, row.amount_refund_pending) == (0, 0)
    # A bad amount: the form again, saying why; no confirmation page.
    for bad in ("abc", "1.234", "-5", "0", "", "1e400", "NaN"):
        answer = ask(user, tx_id, "refund", bad)
        assert answer.status_code == 400, bad
        assert "Enter the amount as a number above zero" in answer.text
        assert 'id="confirm-form"' not in answer.text and 'id="refund-form"' in answer.text
    # A forged message in the URL is not shown: only this session's signed ones are.
    forged = user.get(
        f"/cabinet/transactions/{tx_id}",
        params={"outcome": "ok", "message": "Refunded everything", "sig": "0" * 64},
    )
    assert forged.status_code == 200 and "Refunded everything" not in forged.text
    user.close()


def test_a_confirmation_must_be_the_one_shown(gateway: Gateway, client: httpx.Client) -> None:
    invoice, paid = pay_as(gateway, client)
    tx_id = paid.json()["id"]
    user = english(gateway)
    question = ask(user, tx_id, "charge", "40")
    fields = confirm_fields(question)
    assert set(fields) == {"csrf", "amount", "confirmation"} and fields["amount"] == "40.00"
    url = f"/cabinet/transactions/{tx_id}/charge/confirm"
    flipped = "1" if fields["confirmation"].endswith("0") else "0"
    for changed in (
        {"confirmation": ""},
        {"amount": "100.00"},
        {"amount": "40.001"},
        {"confirmation": fields["confirmation"][:-1] + flipped},
    ):
        data = {k: v for k, v in (fields | changed).items() if v}
        answer = user.post(url, data=data)
        assert answer.status_code == 400, changed
        assert "The confirmation does not match" in answer.text
    # Another kind with the charge's confirmation.
    cancel = user.post(f"/cabinet/transactions/{tx_id}/cancel/confirm", data=fields)
    assert cancel.status_code == 400
    # Another session's confirmation (its own CSRF token is the key).
    other = english(gateway)
    other_fields = confirm_fields(ask(other, tx_id, "charge", "40"))
    mixed = fields | {"confirmation": other_fields["confirmation"]}
    assert user.post(url, data=mixed).status_code == 400
    other.close()
    assert api_status(client, invoice)["statusName"] == "AUTH"
    # CSRF missing or wrong, or another origin: 403, and nothing happens.
    no_csrf = {k: v for k, v in fields.items() if k != "csrf"}
    assert user.post(url, data=no_csrf).status_code == 403
    assert user.post(url, data=fields | {"csrf": "x" * 43}).status_code == 403
    evil = {"Origin": "https://evil.example"}
    assert user.post(url, data=fields, headers=evil).status_code == 403
    ask_no_csrf = user.post(f"/cabinet/transactions/{tx_id}/charge", data={"amount": "40"})
    assert ask_no_csrf.status_code == 403
    assert user.post(f"/cabinet/transactions/{tx_id}/explode", data=fields).status_code == 403
    assert api_status(client, invoice)["statusName"] == "AUTH"
    # The untouched confirmation still works, once.
    done = user.post(url, data=fields)
    assert flash(done, user) == "Charged 40.00 KZT"
    assert user.post(url, data=fields).status_code == 400
    status = api_status(client, invoice)
    assert (status["statusName"], status["payoutAmount"]) == ("CHARGE", 40)
    # Logged out: the confirmation leads to the login page.
    anonymous = gateway.client()
    bounced = anonymous.post(url, data=fields)
    assert (bounced.status_code, bounced.headers["location"]) == (303, "/cabinet/login")
    anonymous.close()
    user.close()


def test_a_confirmation_posted_twice_at_once_operates_once(
    gateway: Gateway, client: httpx.Client
) -> None:
    invoice, paid = pay_as(gateway, client)
    tx_id = paid.json()["id"]
    user = english(gateway)
    assert flash(operate(user, tx_id, "charge", "100")[1], user) == "Charged 100.00 KZT"
    fields = confirm_fields(ask(user, tx_id, "refund", "20"))
    url = f"{gateway.base_url}/cabinet/transactions/{tx_id}/refund/confirm"
    cookies = dict(user.cookies)

    def post(_: int) -> int:
        with httpx.Client(cookies=cookies, timeout=30) as c:
            return c.post(url, data=fields).status_code

    with ThreadPoolExecutor(4) as pool:
        codes = list(pool.map(post, range(4)))
    assert sorted(codes).count(303) >= 1, codes
    assert api_status(client, invoice)["payoutAmount"] == 80
    [row] = query(
        gateway.database_url,
        "SELECT count(*) AS n FROM operations WHERE transaction_id = :t AND kind = 'refund'",
        t=tx_id,
    )
    assert row.n == 1
    user.close()


# --- the list's filters ---------------------------------------------------------------

#: (status, day, amount, card mask, account) of the rows the filter tests seed, newest
#: last; the invoice is "8" and the row's number.
FILTER_ROWS = [
    ("CHARGE", 1, "100.00", "440563...5096", "alice"),
    ("CHARGE", 1, "250.50", "440563...1111", "bob"),
    ("FAILED", 2, "100.00", "539545...5096", ""),
    ("AUTH", 2, "999.99", "440563...5096", "alice"),
    ("REFUND", 3, "1000.00", "400000...2222", "carol"),
    ("CHARGE", 3, "0.01", "", "alice"),
    ("CANCEL", 4, "5000.00", "440563...5096", "bob"),
    ("CHARGE", 5, "100.00", "539545...1111", "alice"),
    ("FAILED", 5, "42.00", "440563...5096", "carol"),
    ("CHARGE", 6, "100.00", "440563...5096", "alice"),
    ("CHARGE", 6, "100.00", "440563...5096", "alice"),
    ("AUTH", 7, "77.70", "444444...5096", "dave"),
]


@pytest.fixture
def filtered(
    gateway: Gateway, database: Database
) -> Iterator[tuple[httpx.Client, list[Transaction]]]:
    """A merchant of its own with FILTER_ROWS (days of November 2026, UTC) and its user."""
    creds = new_merchant(gateway, "Filtered shop")
    start = datetime(2026, 11, 1, tzinfo=UTC)
    rows = []
    with database.write() as session:
        for n, (status, day, amount, mask, account) in enumerate(FILTER_ROWS):
            tx = Transaction(
                merchant_id=creds["merchantId"],
                terminal_id=creds["terminalId"],
                invoice_id=f"8{n:08d}",
                amount=Decimal(amount),
                currency="KZT",
                status=status,
                card_mask=mask,
                account_id=account,
                # Day boundaries: the first row of a day at 00:00:00, the last at 23:59:59.
                created_at=start + timedelta(days=day - 1, seconds=(n % 2) * 86399),
            )
            session.add(tx)
            rows.append(tx)
    user = logged_in(gateway, new_user(gateway, creds["clientId"]), "right-pass-1")
    newest_first = sorted(rows, key=lambda tx: (tx.created_at, tx.id), reverse=True)
    yield user, newest_first
    user.close()


def walk(user: httpx.Client, **params: str) -> list[list[str]]:
    """Every page of the filtered list, following "older" links; checks each page keeps
    the filters in its form and links."""
    pages: list[list[str]] = []
    page = user.get("/cabinet/transactions", params=params)
    while True:
        assert page.status_code == 200, page.text
        pages.append(re.findall(r'<tr data-invoice="([^"]*)"', page.text))
        for name, value in params.items():
            if name != "limit":
                assert f'name="{name}" value="{value}"' in page.text or (
                    f'<option value="{value}" selected>' in page.text
                ), (name, page.text)
        older = re.search(r'<a href="([^"]+)" id="older">', page.text)
        if older is None:
            return pages
        url = older.group(1).replace("&amp;", "&")
        for name, value in params.items():
            assert httpx.URL(url).params.get(name) == value, (name, url)
        page = user.get(url)
        newest = re.search(r'<a href="([^"]+)" id="newest">', page.text)
        assert newest is not None
        assert httpx.URL(newest.group(1).replace("&amp;", "&")).params.get("before") is None


def test_each_filter_over_http_with_disjoint_pages(
    filtered: tuple[httpx.Client, list[Transaction]],
) -> None:
    user, rows = filtered

    def only(test: Callable[[Transaction], bool]) -> list[str]:
        return [tx.invoice_id for tx in rows if test(tx)]

    cases: list[tuple[dict[str, str], list[str]]] = [
        ({}, only(lambda tx: True)),
        ({"status": "CHARGE"}, only(lambda tx: tx.status == "CHARGE")),
        ({"invoice": "800000004"}, ["800000004"]),
        ({"invoice": "80000000"}, []),  # exact, not a prefix
        # Dates are UTC days; "to" is inclusive (23:59:59 of day 3 is in, day 4 is not).
        ({"from": "2026-11-02", "to": "2026-11-03"}, only(lambda tx: tx.created_at.day in (2, 3))),
        ({"from": "2026-11-06"}, only(lambda tx: tx.created_at.day >= 6)),
        ({"to": "2026-11-01"}, only(lambda tx: tx.created_at.day == 1)),
        ({"amount_min": "100", "amount_max": "100"}, only(lambda tx: tx.amount == 100)),
        ({"amount_min": "100,5"}, only(lambda tx: tx.amount >= Decimal("100.5"))),
        ({"amount_max": "0.01"}, only(lambda tx: tx.amount <= Decimal("0.01"))),
        (
            {"amount_min": "42", "amount_max": "999.99"},
            only(lambda tx: 42 <= tx.amount <= Decimal("999.99")),
        ),
        ({"card": "5096"}, only(lambda tx: tx.card_mask.endswith("5096"))),
        ({"card": "440563"}, only(lambda tx: tx.card_mask.startswith("440563"))),
        ({"card": "440563...5096"}, only(lambda tx: tx.card_mask == "440563...5096")),
        ({"card": "4405 63** **** 5096"}, only(lambda tx: tx.card_mask == "440563...5096")),
        ({"card": "4405635096"}, only(lambda tx: tx.card_mask == "440563...5096")),
        ({"card": "...1111"}, only(lambda tx: tx.card_mask.endswith("1111"))),
        ({"account": "alice"}, only(lambda tx: tx.account_id == "alice")),
        ({"account": "alic"}, []),
        (
            {"status": "CHARGE", "card": "5096", "account": "alice", "from": "2026-11-02"},
            only(
                lambda tx: (
                    tx.status == "CHARGE"
                    and tx.card_mask.endswith("5096")
                    and tx.account_id == "alice"
                    and tx.created_at.day >= 2
                )
            ),
        ),
    ]
    for params, expected in cases:
        assert expected or "invoice" in params or "account" in params, params
        # One page of everything, and pages of two: disjoint, in order, all of it.
        assert listed(user, **params) == expected, params
        pages = walk(user, **params, limit="2")
        flat = [invoice for page in pages for invoice in page]
        assert flat == expected, (params, pages)
        assert len(set(flat)) == len(flat)
        assert all(len(page) == 2 for page in pages[:-1]), pages
    assert len(walk(user, status="CHARGE", limit="2")) == 3  # 6 rows: the pager was used
    page = user.get("/cabinet/transactions", params={"status": "AUTH", "card": "5096"})
    assert '<option value="AUTH" selected>' in page.text and 'id="reset"' in page.text


def test_bad_filters_are_400_with_a_message(
    filtered: tuple[httpx.Client, list[Transaction]],
) -> None:
    user, _rows = filtered
    cases = {
        "Dates are YYYY-MM-DD": {"from": "30.11.2026"},
        "Dates are YYYY-MM-DD, ": {"to": "2026-02-30"},
        "The “from” date is after the “to” date.": {"from": "2026-11-05", "to": "2026-11-04"},
        "An amount is a number": {"amount_min": "ten"},
        "An amount is a number, ": {"amount_max": "1.001"},
        "An amount is a number,": {"amount_min": "-5"},
        "The “from” amount is above the “to” amount.": {"amount_min": "10", "amount_max": "9"},
        "Card: the first 6 and/or the last 4 digits": {"card": "50961"},
        "Card: the first 6 and/or the last 4 digits,": {"card": "44056*5096"},
        "There is no such status.": {"status": "PAID"},
        "Too long": {"account": "a" * 101},
        "The page link is damaged": {"before": "2026-11-01T00:00:00~"},
        "The page link is damaged;": {"limit": "many"},
    }
    for message, params in cases.items():
        page = user.get("/cabinet/transactions", params=params | {"lang": "en"})
        assert page.status_code == 400, (params, page.text)
        shown = re.search(r'<p class="error" id="filter-error" role="alert">([^<]*)</p>', page.text)
        assert shown is not None and shown.group(1).startswith(message.rstrip(", ")), params
        assert "<tbody>" not in page.text and 'aria-invalid="true"' in page.text
        for value in params.values():
            if len(value) <= 100 and not value.startswith("2026-11-01T"):
                assert f'value="{value}"' in page.text or value in ("PAID", "many"), params
    # A whole card number is refused and never shown back.
    pan = user.get("/cabinet/transactions", params={"card": "4405639704015096"})
    assert pan.status_code == 400 and "4405639704015096" not in pan.text
    escaped = user.get("/cabinet/transactions", params={"account": "<b>x</b>"})
    assert escaped.status_code == 200 and "<b>x</b>" not in escaped.text
    assert "&lt;b&gt;x&lt;/b&gt;" in escaped.text
