"""postLink notifications end to end: the body (EPAY.md §10), where it goes, retries,
the delivery log (API and CLI), signed postLinks and the production address policy.

Every test that takes ``gw`` runs on SQLite and on PostgreSQL against a delivering
gateway (its worker on, a compressed retry schedule) and a real local receiver
(tests/receiver.py). Every postLink points at that receiver or at a closed local port:
nothing leaves this machine.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from tests import secure3d_support as s3d
from tests.conftest import fresh_postgres
from tests.payform_support import order, submit, transactions
from tests.receiver import Received, Receiver, running_receiver
from tests.support import (
    TERMINAL,
    Gateway,
    cryptopay,
    free_port,
    new_invoice,
    payment_body,
    query,
    start_gateway,
    token,
)
from tolem import reasons

SCHEDULE = (0.2, 0.4, 0.6)
TIMEOUT = 1.0
DELIVERING = {
    "TOLEM_POSTLINK_WORKER": "true",
    "TOLEM_POSTLINK_RETRY_SCHEDULE": ",".join(str(s) for s in SCHEDULE),
    "TOLEM_POSTLINK_TIMEOUT": f"{TIMEOUT:g}",
    "TOLEM_POSTLINK_POLL_INTERVAL": "0.05",
}
#: Timestamps go through the database (microseconds) and two clocks: a little slack.
SLACK = 0.01

VISA = ("4405639704015096", "0125", "815")
DECLINED_484 = ("5578342710750560", "0920", "254")

#: Every key of the postLink body in EPAY.md §10, and no other.
KEYS = {
    "accountId",
    "amount",
    "approvalCode",
    "cardId",
    "cardMask",
    "cardType",
    "code",
    "currency",
    "dateTime",
    "description",
    "email",
    "id",
    "invoiceId",
    "ip",
    "ipCity",
    "ipCountry",
    "ipDistrict",
    "ipLatitude",
    "ipLongitude",
    "ipRegion",
    "issuer",
    "language",
    "name",
    "phone",
    "reason",
    "reasonCode",
    "reference",
    "secret_hash",
    "secure",
    "secureDetails",
    "terminal",
}
DATE_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}\+05:00$")


class _Omit:
    def __repr__(self) -> str:
        return "OMIT"


#: A payment-body override that removes the key.
OMIT: Any = _Omit()


# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with running_receiver(hang_seconds=3 * TIMEOUT) as r:
        yield r


@contextmanager
def _gateway(
    backend: str, data_dir: Path, prefix: str, extra_env: dict[str, str]
) -> Iterator[Gateway]:
    env = DELIVERING | extra_env
    if backend == "sqlite":
        with start_gateway(data_dir, f"sqlite:///{data_dir / 'tolem.db'}", extra_env=env) as gw:
            yield gw
        return
    with fresh_postgres(prefix) as url, start_gateway(data_dir, url, extra_env=env) as gw:
        yield gw


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def gw(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """A delivering gateway with a database of its own."""
    data_dir = tmp_path_factory.mktemp("notifications")
    with _gateway(str(request.param), data_dir, "tolem_notify", {}) as gateway:
        yield gateway


@pytest.fixture
def client(gw: Gateway) -> Iterator[httpx.Client]:
    with gw.client() as c:
        yield c


# --- helpers ----------------------------------------------------------------------------


def path(kind: str) -> str:
    """A receiver path of this behaviour that no other test uses."""
    return f"/{kind.strip('/')}/{uuid.uuid4().hex}"


def pay(
    gw: Gateway,
    client: httpx.Client,
    *,
    card: tuple[str, str, str] = VISA,
    token_extra: dict[str, Any] | None = None,
    **overrides: Any,
) -> tuple[httpx.Response, str]:
    """Token plus cryptopay; ``overrides`` change the body (OMIT removes a key)."""
    invoice = new_invoice()
    tok = token(client, invoice=invoice, **(token_extra or {}))["access_token"]
    body = payment_body(gw, invoice, card=card)
    for key, value in overrides.items():
        if value is OMIT:
            body.pop(key, None)
        else:
            body[key] = value
    return cryptopay(client, tok, body), invoice


def links(receiver: Receiver, ok: str, failure: str | None = None) -> dict[str, Any]:
    return {
        "postLink": receiver.url(ok),
        "failurePostLink": receiver.url(failure) if failure else OMIT,
    }


def notifications_of(gw: Gateway, tx_id: str) -> list[Any]:
    return query(
        gw.database_url,
        "SELECT id, url, state, attempts, body, last_status, last_error FROM notifications"
        " WHERE transaction_id = :t ORDER BY created_at",
        t=tx_id,
    )


def only_notification(gw: Gateway, tx_id: str) -> Any:
    rows = notifications_of(gw, tx_id)
    assert len(rows) == 1, rows
    return rows[0]


def wait_until(check: Callable[[], Any], what: str, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.03)


def wait_state(gw: Gateway, notification_id: str, state: str, timeout: float = 20) -> Any:
    def row() -> Any:
        [found] = query(
            gw.database_url,
            "SELECT id, state, attempts, last_status, last_error, delivered_at"
            " FROM notifications WHERE id = :i",
            i=notification_id,
        )
        return found if found.state == state else None

    return wait_until(row, f"notification {notification_id} to be {state}", timeout)


def transaction(gw: Gateway, tx_id: str) -> Any:
    [row] = query(gw.database_url, "SELECT * FROM transactions WHERE id = :i", i=tx_id)
    return row


def bearer(tok: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}"}


def api_token(client: httpx.Client, **extra: Any) -> str:
    return str(token(client, **extra)["access_token"])


def detail(client: httpx.Client, tok: str, notification_id: str) -> dict[str, Any]:
    response = client.get(f"/notifications/{notification_id}", headers=bearer(tok))
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


def tolem(gw: Gateway, *args: str) -> subprocess.CompletedProcess[str]:
    return gw.cli(*args)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def parse_date_time(text: str) -> datetime:
    """RFC 3339 with nanoseconds (Python reads microseconds)."""
    assert DATE_TIME.match(text), text
    return datetime.fromisoformat(text[:26] + text[29:])


def failed_postlink(gw: Gateway, client: httpx.Client, receiver: Receiver, kind: str) -> Any:
    """A payment whose postLink goes to ``kind`` until the schedule runs out: the row."""
    where = path(kind)
    response, _ = pay(gw, client, **links(receiver, where))
    assert response.status_code == 200, response.text
    row = only_notification(gw, response.json()["id"])
    wait_state(gw, row.id, "failed")
    assert len(receiver.to(where)) == len(SCHEDULE) + 1
    return row


# --- 1. the success body ----------------------------------------------------------------


def test_success_body_is_epay_section_10_field_by_field(
    gw: Gateway, client: httpx.Client, receiver: Receiver
) -> None:
    account = f"acct-{uuid.uuid4().hex[:12]}"
    where = path("ok")
    before = datetime.now(UTC)
    response, invoice = pay(gw, client, accountId=account, cardSave=True, **links(receiver, where))
    assert response.status_code == 200, response.text
    paid = response.json()
    [received] = receiver.wait_for(where)
    body = received.json()
    tx = transaction(gw, paid["id"])
    note = only_notification(gw, paid["id"])

    assert set(body) == KEYS, set(body) ^ KEYS
    # What was sent is exactly what the outbox holds.
    assert received.body.decode("utf-8") == note.body
    assert received.headers["content-type"] == "application/json"
    # Types, as shops' decoders read them.
    assert is_number(body["amount"]) and body["amount"] == 100
    assert type(body["reasonCode"]) is int and body["reasonCode"] == 0
    assert is_number(body["ipLatitude"]) and is_number(body["ipLongitude"])
    for key in KEYS - {"amount", "reasonCode", "ipLatitude", "ipLongitude"}:
        assert isinstance(body[key], str), (key, body[key])
    moment = parse_date_time(body["dateTime"])
    assert before - timedelta(seconds=1) <= moment <= datetime.now(UTC) + timedelta(seconds=1)
    # Outcome.
    assert (body["code"], body["reason"]) == ("ok", "success")
    assert (body["secure"], body["secureDetails"]) == ("no", "")
    assert body["language"] == "RUS"
    # Values: the payment as requested, as answered and as stored.
    assert body["id"] == paid["id"] == tx.id
    assert body["invoiceId"] == invoice == tx.invoice_id
    assert body["currency"] == "KZT" == tx.currency
    assert body["amount"] * 100 == tx.amount  # stored in minor units
    assert body["accountId"] == account == tx.account_id
    assert body["email"] == "jj@example.com" == tx.email
    assert body["phone"] == "77777777777" == tx.phone
    assert body["description"] == "test payment" == tx.description
    assert body["terminal"] == TERMINAL == tx.terminal_id
    assert body["name"] == "JON JONSON" == tx.payer_name
    assert body["ip"] == "127.0.0.1" == tx.ip
    assert body["cardMask"] == "440563...5096" == tx.card_mask == paid["cardMask"]
    assert body["cardType"] == tx.card_type == paid["cardType"] != ""
    assert body["approvalCode"] == tx.approval_code == paid["approvalCode"] != ""
    assert body["reference"] == tx.reference == paid["reference"] != ""
    assert body["issuer"] == tx.issuer == paid["issuer"] != ""
    assert body["secret_hash"] == ""
    for key in ("ipCity", "ipCountry", "ipDistrict", "ipRegion"):
        assert body[key] == ""
    # cardSave: the saved card's id.
    assert body["cardId"] == paid["cardID"] == tx.card_id != ""
    [saved] = query(
        gw.database_url,
        "SELECT state, account_id, transaction_id FROM saved_cards WHERE id = :i",
        i=body["cardId"],
    )
    assert tuple(saved) == ("active", account, paid["id"])
    delivered = wait_state(gw, note.id, "delivered")
    assert (delivered.attempts, delivered.last_status) == (1, 200)


def test_success_body_without_card_save_and_in_english(
    gw: Gateway, client: httpx.Client, receiver: Receiver
) -> None:
    where = path("ok")
    response, _ = pay(gw, client, cardSave=False, language="eng", **links(receiver, where))
    assert response.status_code == 200, response.text
    [received] = receiver.wait_for(where)
    body = received.json()
    assert set(body) == KEYS
    assert body["cardId"] == "" == response.json()["cardID"]
    assert body["language"] == "ENG"
    assert (body["code"], body["reasonCode"], body["secure"]) == ("ok", 0, "no")


# --- 2. failures and where postLinks go ---------------------------------------------------


def assert_failure_body(body: dict[str, Any], tx_id: str, invoice: str, code: int) -> None:
    assert set(body) == KEYS, set(body) ^ KEYS
    assert (body["code"], body["reasonCode"]) == ("error", code)
    assert type(body["reasonCode"]) is int
    # EPAY.md section 10's failure example words 473 its own way.
    expected = "Authentication failed" if code == 473 else reasons.message(code)
    assert body["reason"] == expected != ""
    for key in ("approvalCode", "cardId", "cardMask", "cardType", "reference"):
        assert body[key] == "", (key, body[key])
    assert (body["secure"], body["secureDetails"]) == ("no", "")
    assert (body["id"], body["invoiceId"]) == (tx_id, invoice)
    assert is_number(body["amount"]) and body["amount"] == 100
    assert DATE_TIME.match(body["dateTime"]), body["dateTime"]


def test_decline_goes_to_failure_post_link(
    gw: Gateway, client: httpx.Client, receiver: Receiver
) -> None:
    ok, fail = path("ok"), path("ok")
    response, invoice = pay(gw, client, card=DECLINED_484, **links(receiver, ok, fail))
    assert response.status_code == 400 and response.json()["code"] == 484, response.text
    tx_id = response.json()["id"]
    [received] = receiver.wait_for(fail)
    assert_failure_body(received.json(), tx_id, invoice, 484)
    note = only_notification(gw, tx_id)
    assert note.url == receiver.url(fail)
    wait_state(gw, note.id, "delivered")
    assert receiver.to(ok) == []


def test_decline_without_failure_post_link_goes_to_post_link(
    gw: Gateway, client: httpx.Client, receiver: Receiver
) -> None:
    ok = path("ok")
    response, invoice = pay(gw, client, card=DECLINED_484, **links(receiver, ok))
    assert response.status_code == 400, response.text
    tx_id = response.json()["id"]
    [received] = receiver.wait_for(ok)
    assert_failure_body(received.json(), tx_id, invoice, 484)
    assert only_notification(gw, tx_id).url == receiver.url(ok)


def test_approved_operations_go_to_post_link_though_the_payment_has_a_failure_link(
    gw: Gateway, client: httpx.Client, receiver: Receiver
) -> None:
    """A charge, a refund and a cancel that succeed are successes, though they leave the
    payment REFUND or CANCEL: their postLinks go to postLink, not failurePostLink."""
    ok, fail = path("ok"), path("ok")
    tok = api_token(client)
    refunded, _ = pay(gw, client, **links(receiver, ok, fail))
    cancelled, _ = pay(gw, client, **links(receiver, ok, fail))
    for tx_id, operation in (
        (refunded.json()["id"], "charge"),
        (refunded.json()["id"], "refund"),
        (cancelled.json()["id"], "cancel"),
    ):
        response = client.post(f"/operation/{tx_id}/{operation}", headers=bearer(tok))
        assert response.status_code == 200, response.text
    received = receiver.wait_for(ok, count=5)  # two payments and three operations
    assert sorted(r.json()["id"] for r in received) == sorted(
        [refunded.json()["id"]] * 3 + [cancelled.json()["id"]] * 2
    )
    assert transaction(gw, refunded.json()["id"]).status == "REFUND"
    assert transaction(gw, cancelled.json()["id"]).status == "CANCEL"
    assert receiver.to(fail) == []


def test_links_bound_in_the_token_are_used(
    gw: Gateway, client: httpx.Client, receiver: Receiver
) -> None:
    ok, fail = path("ok"), path("ok")
    bound = {"postLink": receiver.url(ok), "failurePostLink": receiver.url(fail)}
    paid, _ = pay(gw, client, token_extra=bound, postLink=OMIT, failurePostLink=OMIT)
    assert paid.status_code == 200, paid.text
    declined, invoice = pay(
        gw, client, card=DECLINED_484, token_extra=bound, postLink=OMIT, failurePostLink=OMIT
    )
    assert declined.status_code == 400, declined.text
    [success] = receiver.wait_for(ok)
    assert (success.json()["id"], success.json()["code"]) == (paid.json()["id"], "ok")
    [failure] = receiver.wait_for(fail)
    assert_failure_body(failure.json(), declined.json()["id"], invoice, 484)
    assert len(receiver.to(ok)) == 1


def test_no_link_at_all_writes_no_notification(gw: Gateway, client: httpx.Client) -> None:
    paid, _ = pay(gw, client, postLink=OMIT, failurePostLink=OMIT)
    assert paid.status_code == 200, paid.text
    declined, _ = pay(gw, client, card=DECLINED_484, postLink=OMIT, failurePostLink=OMIT)
    assert declined.status_code == 400, declined.text
    blank, _ = pay(gw, client, postLink="", failurePostLink="")
    assert blank.status_code == 200, blank.text
    for response in (paid, declined, blank):
        assert notifications_of(gw, response.json()["id"]) == []


# --- 3. secret_hash -----------------------------------------------------------------------


def test_secret_hash_of_the_token_round_trips(
    gw: Gateway, client: httpx.Client, receiver: Receiver
) -> None:
    secret = "s3cr3t/+=&?#%20 «тенге» \"q\" 'x' \\ end"
    ok, fail = path("ok"), path("ok")
    paid, _ = pay(gw, client, token_extra={"secret_hash": secret}, **links(receiver, ok, fail))
    assert paid.status_code == 200, paid.text
    declined, _ = pay(
        gw,
        client,
        card=DECLINED_484,
        token_extra={"secret_hash": secret},
        **links(receiver, ok, fail),
    )
    assert declined.status_code == 400, declined.text
    assert receiver.wait_for(ok)[0].json()["secret_hash"] == secret
    assert receiver.wait_for(fail)[0].json()["secret_hash"] == secret


# --- 4. 3-D Secure --------------------------------------------------------------------------


def test_3ds_challenge_writes_nothing_and_confirm_writes_one(
    gw: Gateway, client: httpx.Client, receiver: Receiver
) -> None:
    ok, fail = path("ok"), path("ok")
    pending = s3d.start(gw, client, card=s3d.VISA_3DS, **links(receiver, ok, fail))
    assert "secure3D" in pending.body
    assert notifications_of(gw, pending.id) == []
    pa_res, md = s3d.pass_acs(client, pending)
    assert notifications_of(gw, pending.id) == []  # passing the ACS is not the outcome
    confirmed = s3d.confirm(client, pending.token, pending.id, pa_res, md)
    assert confirmed.status_code == 200, confirmed.text
    [received] = receiver.wait_for(ok)
    body = received.json()
    assert set(body) == KEYS
    assert (body["code"], body["reasonCode"], body["reason"]) == ("ok", 0, "success")
    assert (body["secure"], body["secureDetails"]) == ("yes", "F")
    assert body["id"] == pending.id and body["invoiceId"] == pending.invoice
    assert body["approvalCode"] != "" and body["reference"] != ""
    note = only_notification(gw, pending.id)
    wait_state(gw, note.id, "delivered")
    assert receiver.to(fail) == [] and len(receiver.to(ok)) == 1


def test_3ds_expiry_sends_a_failure_with_473(
    gw: Gateway, receiver: Receiver, tmp_path_factory: pytest.TempPathFactory
) -> None:
    backend = "sqlite" if gw.database_url.startswith("sqlite") else "postgresql"
    env = {"TOLEM_SECURE3D_TIMEOUT": "1"}
    data_dir = tmp_path_factory.mktemp("expiry")
    with _gateway(backend, data_dir, "tolem_notify_3ds", env) as other:
        with other.client() as client:
            ok, fail = path("ok"), path("ok")
            pending = s3d.start(other, client, card=s3d.VISA_3DS, **links(receiver, ok, fail))
            assert notifications_of(other, pending.id) == []
            [received] = receiver.wait_for(fail, timeout=30)
        assert_failure_body(received.json(), pending.id, pending.invoice, 473)
        note = only_notification(other, pending.id)
        wait_state(other, note.id, "delivered")
        assert receiver.to(ok) == []


# --- 5. card verification on the hosted page ------------------------------------------------


def test_card_verification_on_the_hosted_page(
    gw: Gateway, client: httpx.Client, receiver: Receiver
) -> None:
    ok, fail = path("ok"), path("ok")
    o = order(
        gw,
        client,
        amount=0,
        currency="USD",
        paymentType="cardVerification",
        cardSave=True,
        postLink=receiver.url(ok),
        failurePostLink=receiver.url(fail),
    )
    posted = submit(client, o.params)
    assert posted.status_code == 303, posted.text
    [(tx_id, status, _code, _charged, card_id, _ref)] = transactions(gw, o.invoice)
    assert status == "VERIFIED"
    [received] = receiver.wait_for(ok)
    body = received.json()
    assert set(body) == KEYS
    assert (body["code"], body["reasonCode"]) == ("ok", 0)
    assert is_number(body["amount"]) and body["amount"] == 0
    assert body["currency"] == "USD"
    assert body["id"] == tx_id and body["invoiceId"] == o.invoice
    assert body["cardId"] == card_id != ""
    assert receiver.to(fail) == []


# --- 6. retries ---------------------------------------------------------------------------

FAILING = {
    "status/500": (500, "HTTP 500"),
    "hang": (None, f"timed out after {TIMEOUT:g} s"),
    "drop": (None, "RemoteProtocolError"),
    "refused": (None, "ConnectError"),
    "status/302": (302, "HTTP 302"),
}


def started(delivery: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(delivery["startedAt"])


@pytest.mark.parametrize("kind", list(FAILING))
def test_failing_receiver_is_retried_on_the_schedule_then_given_up(
    gw: Gateway, client: httpx.Client, receiver: Receiver, kind: str
) -> None:
    if kind == "refused":
        url = f"http://127.0.0.1:{free_port()}/refused"
        where = None
    else:
        where = path(kind)
        url = receiver.url(where)
    response, _ = pay(gw, client, postLink=url, failurePostLink=OMIT)
    assert response.status_code == 200, response.text
    note = only_notification(gw, response.json()["id"])
    row = wait_state(gw, note.id, "failed", timeout=30)
    attempts = len(SCHEDULE) + 1
    assert row.attempts == attempts

    if where is not None:
        got = receiver.to(where)
        assert len(got) == attempts, [r.at for r in got]
        for i, step in enumerate(SCHEDULE):
            gap = got[i + 1].at - got[i].at
            assert gap >= step - SLACK, (i, gap, step)
            assert got[i + 1].body == got[0].body  # the same postLink each time
    assert receiver.to("/ok/redirected") == []  # a redirect is never followed

    status, error = FAILING[kind]
    view = detail(client, api_token(client), note.id)
    assert (view["state"], view["attempts"], view["nextAttemptAt"]) == ("failed", attempts, None)
    assert view["lastStatus"] == status
    deliveries = view["deliveries"]
    assert [d["number"] for d in deliveries] == list(range(1, attempts + 1))
    assert [d["outcome"] for d in deliveries] == ["retry"] * len(SCHEDULE) + ["gave-up"]
    for d in deliveries:
        assert d["httpStatus"] == status, d
        assert error in d["error"], d
        assert isinstance(d["latencyMs"], int) and d["latencyMs"] >= 0, d
        if kind == "hang":
            assert d["latencyMs"] >= TIMEOUT * 1000 * 0.9, d
    for i, step in enumerate(SCHEDULE):
        gap = (started(deliveries[i + 1]) - started(deliveries[i])).total_seconds()
        # The wait starts when an attempt has ended.
        assert gap >= step + deliveries[i]["latencyMs"] / 1000 - SLACK, (i, gap, deliveries)


def test_flaky_receiver_gets_it_on_the_third_attempt(
    gw: Gateway, client: httpx.Client, receiver: Receiver
) -> None:
    where = path("flaky/2")
    response, _ = pay(gw, client, **links(receiver, where))
    assert response.status_code == 200, response.text
    note = only_notification(gw, response.json()["id"])
    row = wait_state(gw, note.id, "delivered")
    assert (row.attempts, row.last_status, row.last_error) == (3, 200, "")
    assert row.delivered_at is not None
    got = receiver.to(where)
    assert len(got) == 3
    for i in range(2):
        assert got[i + 1].at - got[i].at >= SCHEDULE[i] - SLACK
    view = detail(client, api_token(client), note.id)
    assert [d["outcome"] for d in view["deliveries"]] == ["retry", "retry", "delivered"]
    assert [d["httpStatus"] for d in view["deliveries"]] == [500, 500, 200]
    assert view["deliveredAt"] is not None and view["nextAttemptAt"] is None


# --- 7. the delivery log API --------------------------------------------------------------


def other_merchant(gw: Gateway) -> dict[str, Any]:
    created = tolem(gw, "merchant", "create", "--name", "Other shop", "--json")
    assert created.returncode == 0, created.stderr
    creds: dict[str, Any] = json.loads(created.stdout)
    return creds


def test_delivery_log_api(gw: Gateway, client: httpx.Client, receiver: Receiver) -> None:
    # Four failures, then the receiver answers 200: the redelivery succeeds.
    note = failed_postlink(gw, client, receiver, f"flaky/{len(SCHEDULE) + 1}")
    [tx_id] = query(
        gw.database_url, "SELECT transaction_id FROM notifications WHERE id = :i", i=note.id
    )[0]
    mine = api_token(client)

    listed = client.get("/notifications", params={"state": "failed"}, headers=bearer(mine))
    assert listed.status_code == 200, listed.text
    rows = listed.json()["notifications"]
    assert note.id in [r["id"] for r in rows]
    assert {r["state"] for r in rows} == {"failed"}
    by_tx = client.get("/notifications", params={"transactionId": tx_id}, headers=bearer(mine))
    [only] = by_tx.json()["notifications"]
    assert (only["id"], only["transactionId"], only["url"]) == (note.id, tx_id, note.url)
    assert (only["attempts"], only["lastStatus"], only["lastError"]) == (4, 500, "HTTP 500")
    delivered = client.get("/notifications", params={"state": "delivered"}, headers=bearer(mine))
    assert note.id not in [r["id"] for r in delivered.json()["notifications"]]
    bad = client.get("/notifications", params={"state": "nope"}, headers=bearer(mine))
    assert bad.status_code == 400, bad.text

    view = detail(client, mine, note.id)
    assert view["body"] == json.loads(note.body)
    assert len(view["deliveries"]) == 4
    assert client.get(f"/api/notifications/{note.id}", headers=bearer(mine)).json() == view

    # Another merchant sees nothing of it and cannot resend it.
    creds = other_merchant(gw)
    theirs = api_token(
        client,
        client_id=creds["clientId"],
        client_secret=creds["clientSecret"],
        terminal=creds["terminalId"],
    )
    assert client.get(f"/notifications/{note.id}", headers=bearer(theirs)).status_code == 404
    foreign = client.post(f"/notifications/{note.id}/redeliver", headers=bearer(theirs))
    assert foreign.status_code == 404, foreign.text
    assert client.get("/notifications", headers=bearer(theirs)).json() == {"notifications": []}
    assert client.get(
        "/notifications", params={"state": "failed"}, headers=bearer(theirs)
    ).json() == {"notifications": []}
    # No token, or a bad one: 401.
    for headers in ({}, {"Authorization": "Bearer nonsense"}):
        assert client.get("/notifications", headers=headers).status_code == 401
        assert client.get(f"/notifications/{note.id}", headers=headers).status_code == 401
        assert (
            client.post(f"/notifications/{note.id}/redeliver", headers=headers).status_code == 401
        )
    assert client.get(f"/notifications/{uuid.uuid4()}", headers=bearer(mine)).status_code == 404
    unknown = client.post(f"/notifications/{uuid.uuid4()}/redeliver", headers=bearer(mine))
    assert unknown.status_code == 404
    # None of that moved it.
    [still] = query(
        gw.database_url, "SELECT state, attempts FROM notifications WHERE id = :i", i=note.id
    )
    assert tuple(still) == ("failed", 4)
    assert len(receiver.to(note.url.removeprefix(receiver.base_url))) == 4

    # Its merchant resends it: sent again, delivered.
    again = client.post(f"/notifications/{note.id}/redeliver", headers=bearer(mine))
    assert again.status_code == 200, again.text
    assert again.json()["id"] == note.id
    receiver.wait_for(note.url.removeprefix(receiver.base_url), 5)
    row = wait_state(gw, note.id, "delivered")
    assert (row.attempts, row.last_status) == (5, 200)
    view = detail(client, mine, note.id)
    assert [d["outcome"] for d in view["deliveries"]] == ["retry"] * 3 + ["gave-up", "delivered"]
    assert view["deliveries"][-1]["httpStatus"] == 200


# --- 8. the CLI -----------------------------------------------------------------------------


def test_cli_lists_and_redelivers(gw: Gateway, client: httpx.Client, receiver: Receiver) -> None:
    note = failed_postlink(gw, client, receiver, f"flaky/{len(SCHEDULE) + 1}")
    listed = tolem(gw, "notifications", "list", "--failed", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    [row] = [r for r in rows if r["id"] == note.id]
    assert (row["state"], row["attempts"], row["url"]) == ("failed", 4, note.url)
    assert (row["lastStatus"], row["nextAttemptAt"]) == (500, None)
    assert {r["state"] for r in rows} == {"failed"}

    resent = tolem(gw, "notifications", "redeliver", note.id)
    assert resent.returncode == 0, resent.stderr + resent.stdout
    receiver.wait_for(note.url.removeprefix(receiver.base_url), 5)
    row = wait_state(gw, note.id, "delivered")
    assert (row.attempts, row.last_status) == (5, 200)

    unknown = tolem(gw, "notifications", "redeliver", str(uuid.uuid4()))
    assert unknown.returncode == 1, unknown.stdout + unknown.stderr
    assert "no notification" in unknown.stdout


# --- 9. signed postLinks ------------------------------------------------------------------


def verify(secret: str, received: Received) -> Any:
    return Webhook(secret).verify(received.body, received.headers)


def test_signed_postlinks(gw: Gateway, client: httpx.Client, receiver: Receiver) -> None:
    plain = path("ok")
    response, _ = pay(gw, client, **links(receiver, plain))
    assert response.status_code == 200
    [unsigned] = receiver.wait_for(plain)
    assert not [h for h in unsigned.headers if h.startswith("webhook-")]

    signing = tolem(gw, "merchant", "signing", "test")
    assert signing.returncode == 0, signing.stderr + signing.stdout
    try:
        secret = signing.stdout.strip()
        assert re.fullmatch(r"whsec_[A-Za-z0-9+/]{43}=", secret), secret
        where = path("flaky/1")
        response, _ = pay(gw, client, **links(receiver, where))
        assert response.status_code == 200
        first, second = receiver.wait_for(where, 2)
        note = only_notification(gw, response.json()["id"])
        for received in (first, second):
            assert received.headers["webhook-id"] == note.id
            assert re.fullmatch(r"\d+", received.headers["webhook-timestamp"])
            assert abs(int(received.headers["webhook-timestamp"]) - time.time()) < 60
            assert received.headers["webhook-signature"].startswith("v1,")
            assert verify(secret, received) == json.loads(received.body)
            tampered = received.body.replace(b'"code":"ok"', b'"code":"OK"')
            assert tampered != received.body
            with pytest.raises(WebhookVerificationError):
                Webhook(secret).verify(tampered, received.headers)
            with pytest.raises(WebhookVerificationError):
                verify(secret.replace(secret[6:10], "AAAA"), received)
        wait_state(gw, note.id, "delivered")
    finally:
        off = tolem(gw, "merchant", "signing", "test", "--off")
        assert off.returncode == 0, off.stderr + off.stdout
    assert "whsec_" not in off.stdout
    after = path("ok")
    response, _ = pay(gw, client, **links(receiver, after))
    assert response.status_code == 200
    [unsigned] = receiver.wait_for(after)
    assert not [h for h in unsigned.headers if h.startswith("webhook-")]


def test_signing_for_an_unknown_merchant_fails(gw: Gateway) -> None:
    result = tolem(gw, "merchant", "signing", "no-such-client")
    assert result.returncode == 1, result.stdout + result.stderr


# --- 10. production: public addresses only --------------------------------------------------

REFUSED_HOSTS = [
    "127.0.0.1",
    "localhost",
    "::1",
    "10.1.2.3",
    "192.168.0.1",
    "172.16.0.1",
    "169.254.169.254",
    "fd00::1",
    "100.64.0.1",
    "0.0.0.0",
    "::ffff:127.0.0.1",
    "64:ff9b::a00:1",  # NAT64 form of 10.0.0.1
    "2002:a00:1::1",  # 6to4 form of 10.0.0.1
    "::7f00:1",  # IPv4-compatible 127.0.0.1
    "192.0.0.8",
    "224.0.0.1",
]


@pytest.mark.parametrize("host", REFUSED_HOSTS)
def test_public_address_refuses_local_and_private(host: str) -> None:
    from tolem.notifications.delivery import DestinationRefused, public_address

    with pytest.raises(DestinationRefused, match="not a public address"):
        asyncio.run(public_address(host, 443))


def test_public_address_keeps_a_public_literal() -> None:
    from tolem.notifications.delivery import public_address

    # Literals only: getaddrinfo resolves nothing over the network for them.
    assert asyncio.run(public_address("1.1.1.1", 443)) == "1.1.1.1"
    assert asyncio.run(public_address("2606:4700:4700::1111", 443)) == "2606:4700:4700::1111"


def test_worker_checking_destinations_sends_nothing_to_a_local_address(
    tmp_path: Path, receiver: Receiver
) -> None:
    from tolem.config import Settings
    from tolem.db.migrate import prepare_database
    from tolem.notifications import service
    from tolem.notifications.delivery import DeliveryWorker
    from tolem.runtime import Runtime

    settings = Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'w.db'}")
    rt = Runtime.start(settings)
    try:
        prepare_database(rt.db, sandbox=True)
        worker = DeliveryWorker(rt)
        assert worker.check_destinations is False  # sandbox mode
        worker.check_destinations = True  # as in production mode
        where = path("ok")
        for url in (receiver.url(where), receiver.url(where).replace("127.0.0.1", "localhost")):
            claimed = service.Claimed(
                id=str(uuid.uuid4()),
                merchant_id=str(uuid.uuid4()),
                url=url,
                body='{"code":"ok"}',
                attempt_id=1,
                number=1,
            )

            async def attempt(claimed: service.Claimed = claimed) -> service.AttemptResult:
                async with httpx.AsyncClient(follow_redirects=False, trust_env=False) as http:
                    return await worker.attempt(http, claimed)

            result = asyncio.run(attempt())
            assert result.permanent and not result.delivered, result
            assert result.http_status is None
            assert "not a public address" in result.error
        assert receiver.to(where) == []
    finally:
        rt.close()


# --- found by review: scoping, hostile ids, deadlines, stale results ----------------------


def test_an_invoice_bound_token_cannot_read_the_delivery_log(
    gw: Gateway, client: httpx.Client, receiver: Receiver
) -> None:
    """Such a token sits in the customer's browser on the hosted page."""
    response, _invoice = pay(gw, client, **links(receiver, path("ok")))
    row = only_notification(gw, response.json()["id"])
    customer = str(token(client, invoice=new_invoice())["access_token"])
    for method, url in (
        ("GET", "/notifications"),
        ("GET", f"/notifications/{row.id}"),
        ("POST", f"/notifications/{row.id}/redeliver"),
    ):
        answer = client.request(method, url, headers=bearer(customer))
        assert answer.status_code == 401, (url, answer.text)
        assert "service token" in answer.json()["message"]


def test_hostile_ids_are_answered_not_crashed_on(gw: Gateway, client: httpx.Client) -> None:
    service_token = api_token(client)
    headers = bearer(service_token)
    assert client.get("/notifications/%00", headers=headers).status_code == 404
    assert client.post("/notifications/a%00b/redeliver", headers=headers).status_code == 404
    assert client.get("/notifications/" + "9" * 500, headers=headers).status_code == 404
    listed = client.get("/notifications?transactionId=%00", headers=headers)
    assert listed.status_code == 400, listed.text
    status = client.get("/check-status/payment/transaction/%00", headers=headers)
    assert status.status_code == 400 and status.json()["resultCode"] == "102"


def test_a_trickling_receiver_is_cut_at_the_timeout_and_never_sent_twice_at_once(
    gw: Gateway, client: httpx.Client, receiver: Receiver
) -> None:
    where = path("trickle")
    response, _ = pay(gw, client, **links(receiver, where))
    row = only_notification(gw, response.json()["id"])
    wait_state(gw, row.id, "failed", timeout=40)
    attempts = query(
        gw.database_url,
        "SELECT latency_ms, error, outcome FROM delivery_attempts"
        " WHERE notification_id = :n ORDER BY number",
        n=row.id,
    )
    assert [a.outcome for a in attempts] == ["retry"] * len(SCHEDULE) + ["gave-up"]
    for attempt in attempts:
        assert attempt.latency_ms <= TIMEOUT * 1000 + 500, attempt
        assert attempt.error == f"timed out after {TIMEOUT:g} s"
    # One request per attempt: no claim expired under a running attempt.
    assert len(receiver.to(where)) == len(SCHEDULE) + 1
