"""The SDK (tolem.client) over real HTTP: retries, time-outs and broken answers through a
real faulty proxy (tests/faulty_proxy.py), postLink helpers with real deliveries, and
the hosted-page link the SDK builds, paid in real Chromium.

Retry tests run on SQLite and PostgreSQL (the ``gateway`` fixture) with the proxy in
front of the gateway; the postLink and browser tests use a delivering SQLite gateway
of their own and a real receiver (tests/receiver.py).
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page
from standardwebhooks import Webhook

from tests.browser import chromium
from tests.faulty_proxy import (
    DROP,
    FORWARD,
    FORWARD_THEN_504,
    HANG,
    HTML,
    FaultyProxy,
    running_proxy,
)
from tests.payform_support import transactions
from tests.receiver import Receiver, running_receiver
from tests.support import (
    CLIENT_ID,
    CLIENT_SECRET,
    TERMINAL,
    Gateway,
    free_port,
    new_invoice,
    start_gateway,
)
from tolem.client import (
    AsyncEpayClient,
    Card,
    Environment,
    EpayClient,
    EpayConnectionError,
    InsufficientFunds,
    InvalidSignature,
    NotFound,
    Payment,
    PaymentRequest,
    ProtocolError,
    ServerError,
    check_secret_hash,
    parse_postlink,
    verify_postlink_signature,
)

VISA = Card.parse("4405639704015096", "01/25", "815")
DECLINED_484 = Card.parse("5578342710750560", "09/20", "254")
BACKOFF = 0.05
CRYPTOPAY = "/payment/cryptopay"
STATUS = "/check-status/"
OPERATION = "/operation/"


# --- helpers ------------------------------------------------------------------------------


def sdk(base_url: str, **options: Any) -> EpayClient:
    """The sync client for a tolem gateway (or the proxy in front of one)."""
    options.setdefault("backoff", BACKOFF)
    return EpayClient(
        Environment.tolem(base_url),
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        terminal_id=TERMINAL,
        **options,
    )


def async_sdk(base_url: str, **options: Any) -> AsyncEpayClient:
    options.setdefault("backoff", BACKOFF)
    return AsyncEpayClient(
        Environment.tolem(base_url),
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        terminal_id=TERMINAL,
        **options,
    )


def plain(base_url: str, *, api_url: str | None = None) -> Environment:
    """``base_url`` as the SDK sees ePay's own hosts: no Idempotency-Key, POSTs unsafe."""
    return Environment(
        "plain", base_url, api_url or base_url, f"{base_url}/payform/", is_tolem=False
    )


def plain_sdk(environment: Environment, **options: Any) -> EpayClient:
    options.setdefault("backoff", BACKOFF)
    return EpayClient(
        environment,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        terminal_id=TERMINAL,
        **options,
    )


def order(amount: Decimal | int = 100, **fields: Any) -> PaymentRequest:
    fields.setdefault("description", "SDK transport test")
    fields.setdefault("name", "JON JONSON")
    return PaymentRequest(invoice_id=new_invoice(), amount=Decimal(amount), **fields)


def keys(proxy: FaultyProxy, path: str) -> list[str | None]:
    return [s.headers.get("idempotency-key") for s in proxy.seen(path)]


def statuses(gateway: Gateway, invoice: str) -> list[str]:
    return [row.status for row in transactions(gateway, invoice)]


@pytest.fixture
def proxy(gateway: Gateway) -> Iterator[FaultyProxy]:
    with running_proxy(gateway.base_url) as p:
        yield p


# --- 1. retries: what is retried, what is not ------------------------------------------------


def test_a_get_survives_two_503s_and_gives_up_after_retries(
    gateway: Gateway, proxy: FaultyProxy
) -> None:
    request = order()
    with sdk(gateway.base_url) as direct:
        payment = direct.pay(request, VISA)
    with sdk(proxy.base_url, retries=2) as client:
        proxy.fail(STATUS, 503, times=2)
        found = client.status(request.invoice_id)
        assert (found.id, found.status, found.amount) == (payment.id, "AUTH", Decimal(100))
        assert [s.action for s in proxy.seen(STATUS)] == [503, 503, FORWARD]

        proxy.fail(STATUS, 503, times=3)
        with pytest.raises(ServerError) as refused:
            client.status(request.invoice_id)
    assert refused.value.status_code == 503
    assert refused.value.message == "injected HTTP 503"
    assert [s.action for s in proxy.seen(STATUS)][3:] == [503, 503, 503]
    assert proxy.pending() == 0


def test_retry_after_is_honoured(gateway: Gateway, proxy: FaultyProxy) -> None:
    with sdk(proxy.base_url, backoff=0.01) as client:
        client.service_token()
        proxy.fail(STATUS, 503, retry_after=1)
        started = time.monotonic()
        with pytest.raises(NotFound):  # no such payment, answered after the wait
            client.status(new_invoice())
        assert time.monotonic() - started >= 1.0
    assert [s.action for s in proxy.seen(STATUS)] == [503, FORWARD]


def test_a_503_on_cryptopay_is_not_retried_and_says_the_outcome_is_unknown(
    gateway: Gateway, proxy: FaultyProxy
) -> None:
    # tolem keeps no 5xx under its key: a repeat would run again, and a payment that
    # committed before the 5xx would come back as "invoice already used". So no repeat.
    request = order()
    with sdk(proxy.base_url) as client:
        proxy.fail(CRYPTOPAY, 503)
        with pytest.raises(ServerError) as error:
            client.pay(request, VISA)
        assert error.value.status_code == 503 and error.value.outcome_unknown
        # The caller asks, as the error says; here the request never arrived.
        with pytest.raises(NotFound):
            client.status(request.invoice_id)
        payment = client.pay(request, VISA)  # the same order again, a new key
    first, second = proxy.seen(CRYPTOPAY)
    assert (first.action, first.upstream_status) == (503, None)
    assert (second.action, second.upstream_status, second.replayed) == (FORWARD, 200, False)
    assert first.headers["idempotency-key"] != second.headers["idempotency-key"]
    assert statuses(gateway, request.invoice_id) == ["AUTH"]
    assert payment.status == "AUTH"


def test_pay_survives_a_lost_answer_and_pays_once(gateway: Gateway, proxy: FaultyProxy) -> None:
    request = order()
    with sdk(proxy.base_url) as client:
        proxy.fail(CRYPTOPAY, DROP)
        payment = client.pay(request, VISA)
        found = client.status(request.invoice_id)
    first, second = proxy.seen(CRYPTOPAY)
    # The gateway paid on the first attempt; the second got that answer replayed.
    assert (first.action, first.upstream_status, first.replayed) == (DROP, 200, False)
    assert (second.action, second.upstream_status, second.replayed) == (FORWARD, 200, True)
    assert len(set(keys(proxy, CRYPTOPAY))) == 1 and keys(proxy, CRYPTOPAY)[0]
    assert (payment.status, found.id, found.status) == ("AUTH", payment.id, "AUTH")
    assert statuses(gateway, request.invoice_id) == ["AUTH"]


def test_a_504_after_the_gateway_paid_is_an_unknown_outcome_not_a_refusal(
    gateway: Gateway, proxy: FaultyProxy
) -> None:
    """A load balancer that gave up waiting: the gateway paid, the shop saw a 504."""
    request = order()
    with sdk(proxy.base_url) as client:
        proxy.fail(CRYPTOPAY, FORWARD_THEN_504)
        with pytest.raises(ServerError) as error:
            client.pay(request, VISA)
        assert error.value.outcome_unknown
        assert client.status(request.invoice_id).status == "AUTH"  # it did go through
    [only] = proxy.seen(CRYPTOPAY)
    assert only.upstream_status == 200
    assert len(transactions(gateway, request.invoice_id)) == 1


def test_charge_through_a_lost_answer_charges_once(gateway: Gateway, proxy: FaultyProxy) -> None:
    request = order(100)
    with sdk(proxy.base_url) as client:
        payment = client.pay(request, VISA)
        proxy.fail(OPERATION, DROP)
        charged = client.charge(payment.id, 40)
        found = client.status(request.invoice_id)
    assert (charged.code, charged.status, charged.amount_charged) == (0, "CHARGE", Decimal(40))
    assert found.status == "CHARGE"
    first, second = proxy.seen(OPERATION)
    assert first.path == second.path == f"/operation/{payment.id}/charge?amount=40"
    assert (first.action, first.replayed, second.replayed) == (DROP, False, True)
    assert len(set(keys(proxy, OPERATION))) == 1
    [row] = transactions(gateway, request.invoice_id)
    assert (row.status, row.amount_charged) == ("CHARGE", 4000)  # tiyn: 40, not 80


def test_a_409_still_running_is_waited_out(gateway: Gateway, proxy: FaultyProxy) -> None:
    request = order()
    with sdk(proxy.base_url) as client:
        proxy.fail(CRYPTOPAY, 409)
        client.pay(request, VISA)
    assert [s.action for s in proxy.seen(CRYPTOPAY)] == [409, FORWARD]
    assert len(set(keys(proxy, CRYPTOPAY))) == 1
    assert statuses(gateway, request.invoice_id) == ["AUTH"]


def test_a_409_that_outlasts_the_retries_is_an_unknown_outcome(
    gateway: Gateway, proxy: FaultyProxy
) -> None:
    request = order()
    with sdk(proxy.base_url) as client:
        proxy.fail(CRYPTOPAY, 409, times=3)
        with pytest.raises(EpayConnectionError, match="still running") as error:
            client.pay(request, VISA)
    assert error.value.status_code == 409
    assert [s.action for s in proxy.seen(CRYPTOPAY)] == [409, 409, 409]
    assert statuses(gateway, request.invoice_id) == []


def test_without_idempotency_a_post_is_not_retried_but_a_get_is(
    gateway: Gateway, proxy: FaultyProxy
) -> None:
    with plain_sdk(plain(proxy.base_url)) as client:
        refused = order()
        proxy.fail(CRYPTOPAY, 503)
        with pytest.raises(ServerError) as error:
            client.pay(refused, VISA)
        assert error.value.status_code == 503
        [only] = proxy.seen(CRYPTOPAY)
        assert "idempotency-key" not in only.headers
        assert statuses(gateway, refused.invoice_id) == []

        # A lost answer: the gateway paid, the SDK cannot know and must not pay again.
        lost = order()
        proxy.fail(CRYPTOPAY, DROP)
        with pytest.raises(EpayConnectionError):
            client.pay(lost, VISA)
        assert [s.action for s in proxy.seen(CRYPTOPAY)] == [503, DROP]

        proxy.fail(STATUS, 503, times=2)  # a GET still is retried
        assert client.status(lost.invoice_id).status == "AUTH"
        assert [s.action for s in proxy.seen(STATUS)] == [503, 503, FORWARD]
    assert statuses(gateway, lost.invoice_id) == ["AUTH"]

    with sdk(proxy.base_url, idempotency_keys=False) as keyless:
        proxy.fail(CRYPTOPAY, 503)
        with pytest.raises(ServerError):
            keyless.pay(order(), VISA)
    assert [s.action for s in proxy.seen(CRYPTOPAY)] == [503, DROP, 503]
    assert "idempotency-key" not in proxy.seen(CRYPTOPAY)[-1].headers


def test_retries_zero_disables_retrying(gateway: Gateway, proxy: FaultyProxy) -> None:
    with sdk(proxy.base_url, retries=0) as client:
        proxy.fail(STATUS, 503)
        with pytest.raises(ServerError):
            client.status(new_invoice())
        assert [s.action for s in proxy.seen(STATUS)] == [503]

        request = order()
        proxy.fail(CRYPTOPAY, DROP)
        with pytest.raises(EpayConnectionError):
            client.pay(request, VISA)
        assert [s.action for s in proxy.seen(CRYPTOPAY)] == [DROP]
    assert statuses(gateway, request.invoice_id) == ["AUTH"]


def three_attempts(elapsed: float) -> bool:
    """With backoff 0.3 a refused connection waits 0.3 and 0.6 s between three attempts;
    a fourth would add 1.2 s. Refusals on 127.0.0.1 themselves take no time."""
    assert 0.9 <= elapsed < 0.9 + 1.2, elapsed
    return True


def test_a_refused_connection_is_retried_with_backoff_then_fails() -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with sdk(dead, retries=2, backoff=0.3) as client:
        started = time.monotonic()
        with pytest.raises(EpayConnectionError) as error:
            client.status(new_invoice())
        assert three_attempts(time.monotonic() - started)
    assert error.value.status_code is None
    assert "ConnectError" in str(error.value)

    with sdk(dead, retries=0, backoff=5) as client:
        started = time.monotonic()
        with pytest.raises(EpayConnectionError):
            client.status(new_invoice())
        assert time.monotonic() - started < 5  # no wait at all


def test_a_post_that_never_left_is_retried_even_without_idempotency(gateway: Gateway) -> None:
    """Only the API host is down: cryptopay was never sent, so trying again is safe."""
    request = order()
    with sdk(gateway.base_url) as good:
        token = good.token(request)
        cryptogram = good.cryptogram(VISA)
    dead = f"http://127.0.0.1:{free_port()}"
    environment = plain(gateway.base_url, api_url=dead)
    with plain_sdk(environment, retries=2, backoff=0.3) as client:
        started = time.monotonic()
        with pytest.raises(EpayConnectionError):
            client.cryptopay(request, cryptogram, token)
        assert three_attempts(time.monotonic() - started)


def test_a_hanging_post_times_out_quickly_and_is_not_retried(
    gateway: Gateway, proxy: FaultyProxy
) -> None:
    request = order()
    with sdk(gateway.base_url) as good:
        token = good.token(request)
        cryptogram = good.cryptogram(VISA)
    with plain_sdk(plain(proxy.base_url), timeout=0.5, retries=2) as client:
        proxy.fail(CRYPTOPAY, HANG)
        started = time.monotonic()
        with pytest.raises(EpayConnectionError) as error:
            client.cryptopay(request, cryptogram, token)
        elapsed = time.monotonic() - started
    assert 0.5 <= elapsed < 3, elapsed
    assert "ReadTimeout" in str(error.value)
    assert [s.action for s in proxy.seen(CRYPTOPAY)] == [HANG]


def test_a_hanging_get_is_retried_then_times_out(gateway: Gateway, proxy: FaultyProxy) -> None:
    with sdk(proxy.base_url, timeout=0.5, retries=1) as client:
        client.service_token()
        proxy.fail(STATUS, HANG, times=2)
        started = time.monotonic()
        with pytest.raises(EpayConnectionError):
            client.status(new_invoice())
        elapsed = time.monotonic() - started
    assert 1.0 <= elapsed < 5, elapsed
    assert [s.action for s in proxy.seen(STATUS)] == [HANG, HANG]


def test_an_html_answer_is_a_protocol_error(gateway: Gateway, proxy: FaultyProxy) -> None:
    with sdk(proxy.base_url) as client:
        proxy.fail(STATUS, HTML)
        with pytest.raises(ProtocolError, match="not JSON") as error:
            client.status(new_invoice())
        assert not error.value.outcome_unknown  # a GET changes nothing

        request = order()
        proxy.fail(CRYPTOPAY, HTML)
        with pytest.raises(ProtocolError, match="not JSON") as error:
            client.pay(request, VISA)
        assert error.value.outcome_unknown  # a 200 that is not ePay's: it may have paid
        assert [s.action for s in proxy.seen(CRYPTOPAY)] == [HTML]  # a 200: not retried

        proxy.fail("/oauth2/token", HTML)
        with pytest.raises(ProtocolError, match="not JSON"):
            client.token(order())

    with sdk(proxy.base_url) as fresh:  # no key cached yet
        proxy.fail("/public.rsa", HTML)
        with pytest.raises(ProtocolError, match="not PEM"):
            fresh.cryptogram(VISA)
    assert statuses(gateway, request.invoice_id) == []


# --- 1b. the async client, the same rules ---------------------------------------------------


def test_async_pay_survives_a_lost_answer_but_not_a_503(
    gateway: Gateway, proxy: FaultyProxy
) -> None:
    after_503, after_drop = order(), order()

    async def scenario() -> tuple[ServerError, Payment, str, str]:
        async with async_sdk(proxy.base_url) as client:
            proxy.fail(CRYPTOPAY, 503)
            with pytest.raises(ServerError) as refused:
                await client.pay(after_503, VISA)
            proxy.fail(CRYPTOPAY, DROP)
            second = await client.pay(after_drop, VISA)
            proxy.fail(STATUS, 503, times=2)
            found = await client.status(after_drop.invoice_id)
            charged = await client.charge(second.id)
            return refused.value, second, found.id, charged.status

    refused, second, found_id, charged = asyncio.run(scenario())
    assert refused.outcome_unknown and refused.status_code == 503
    assert found_id == second.id and charged == "CHARGE"
    seen = proxy.seen(CRYPTOPAY)
    assert [(s.action, s.upstream_status, s.replayed) for s in seen] == [
        (503, None, False),
        (DROP, 200, False),
        (FORWARD, 200, True),
    ]
    _, key_drop, key_drop_again = keys(proxy, CRYPTOPAY)
    assert key_drop == key_drop_again
    assert [s.action for s in proxy.seen(STATUS)] == [503, 503, FORWARD]
    assert statuses(gateway, after_503.invoice_id) == []


def test_async_without_idempotency_a_post_is_not_retried(
    gateway: Gateway, proxy: FaultyProxy
) -> None:
    async def scenario() -> None:
        async with AsyncEpayClient(
            plain(proxy.base_url),
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            terminal_id=TERMINAL,
            backoff=BACKOFF,
        ) as client:
            proxy.fail(CRYPTOPAY, DROP)
            with pytest.raises(EpayConnectionError):
                await client.pay(order(), VISA)
            proxy.fail(CRYPTOPAY, 503)
            with pytest.raises(ServerError):
                await client.pay(order(), VISA)

    asyncio.run(scenario())
    assert [s.action for s in proxy.seen(CRYPTOPAY)] == [DROP, 503]


def test_async_refused_connection_fails_after_backoff() -> None:
    dead = f"http://127.0.0.1:{free_port()}"

    async def scenario() -> float:
        async with async_sdk(dead, retries=2, backoff=0.3) as client:
            started = time.monotonic()
            with pytest.raises(EpayConnectionError):
                await client.status(new_invoice())
            return time.monotonic() - started

    assert three_attempts(asyncio.run(scenario()))


# --- 2. postLinks: parse, secret_hash, signatures, with real deliveries --------------------


@pytest.fixture(scope="module")
def delivering(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway of this module's own (SQLite) whose postLink worker delivers."""
    data_dir = tmp_path_factory.mktemp("client-postlinks")
    env = {"TOLEM_POSTLINK_WORKER": "true", "TOLEM_POSTLINK_POLL_INTERVAL": "0.05"}
    with start_gateway(data_dir, f"sqlite:///{data_dir / 'tolem.db'}", extra_env=env) as gw:
        yield gw


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with running_receiver() as r:
        yield r


def fresh_path() -> str:
    return f"/ok/{uuid.uuid4().hex}"


def tolem_cli(gw: Gateway, *args: str) -> subprocess.CompletedProcess[str]:
    return gw.cli(*args)


def test_a_delivered_postlink_parses_and_its_secret_hash_checks(
    delivering: Gateway, receiver: Receiver
) -> None:
    where, failure = fresh_path(), fresh_path()
    secret = f"order-secret-{uuid.uuid4().hex}"
    request = order(
        Decimal("150.50"),
        post_link=receiver.url(where),
        failure_post_link=receiver.url(failure),
        secret_hash=secret,
    )
    with sdk(delivering.base_url) as client:
        payment = client.pay(request, VISA)
    [received] = receiver.wait_for(where)
    postlink = parse_postlink(received.body)
    assert postlink.approved is True
    assert (postlink.code, postlink.reason_code) == ("ok", 0)
    assert isinstance(postlink.amount, Decimal) and postlink.amount == Decimal("150.50")
    assert (postlink.invoice_id, postlink.id) == (request.invoice_id, payment.id)
    assert (postlink.currency, postlink.terminal) == ("KZT", TERMINAL)
    assert postlink.card_mask == VISA.mask
    # The same from the decoded JSON and from text.
    assert parse_postlink(json.loads(received.body)) == postlink
    assert parse_postlink(received.body.decode()) == postlink

    assert check_secret_hash(postlink, secret) is True
    assert check_secret_hash(postlink, secret + "x") is False
    assert check_secret_hash(postlink, secret.upper()) is False
    assert check_secret_hash(postlink, "") is False
    assert receiver.to(failure) == []  # the success went to postLink only

    with pytest.raises(ProtocolError):
        parse_postlink(b"<html>not json</html>")
    with pytest.raises(ProtocolError):
        parse_postlink(b"[1, 2]")


def test_a_declined_payment_posts_a_failure_postlink(
    delivering: Gateway, receiver: Receiver
) -> None:
    where, failure = fresh_path(), fresh_path()
    secret = f"decline-{uuid.uuid4().hex}"
    request = order(
        post_link=receiver.url(where), failure_post_link=receiver.url(failure), secret_hash=secret
    )
    with sdk(delivering.base_url) as client, pytest.raises(InsufficientFunds) as declined:
        client.pay(request, DECLINED_484)
    assert declined.value.code == 484
    [received] = receiver.wait_for(failure)
    postlink = parse_postlink(received.body)
    assert postlink.approved is False
    assert (postlink.code, postlink.reason_code) == ("error", declined.value.code)
    assert postlink.invoice_id == request.invoice_id
    assert postlink.id == declined.value.transaction_id
    assert check_secret_hash(postlink, secret) is True
    assert receiver.to(where) == []


def test_signed_postlinks_verify_and_tampering_is_caught(
    delivering: Gateway, receiver: Receiver
) -> None:
    signing = tolem_cli(delivering, "merchant", "signing", "test")
    assert signing.returncode == 0, signing.stderr + signing.stdout
    try:
        secret = signing.stdout.strip()
        assert re.fullmatch(r"whsec_\S+", secret), secret
        where = fresh_path()
        with sdk(delivering.base_url) as client:
            client.pay(order(post_link=receiver.url(where)), VISA)
        [received] = receiver.wait_for(where)
    finally:
        off = tolem_cli(delivering, "merchant", "signing", "test", "--off")
        assert off.returncode == 0, off.stderr + off.stdout

    body, headers = received.body, received.headers
    # Each raises InvalidSignature unless it verifies: bytes, text, any header case.
    verify_postlink_signature(body, headers, secret)
    verify_postlink_signature(body.decode(), headers, secret)
    verify_postlink_signature(body, {name.title(): v for name, v in headers.items()}, secret)
    unhashed = parse_postlink(body)  # paid without a secret_hash: nothing may match it
    assert unhashed.approved and unhashed.secret_hash == ""
    assert check_secret_hash(unhashed, "") is False

    tampered = bytearray(body)
    at = body.index(b'"ok"') + 1
    tampered[at] = ord("O")
    with pytest.raises(InvalidSignature):
        verify_postlink_signature(bytes(tampered), headers, secret)
    tampered[at] = 0xFF  # not even UTF-8
    with pytest.raises(InvalidSignature):
        verify_postlink_signature(bytes(tampered), headers, secret)
    # Signed right but ten minutes ago: a captured postLink replayed later.
    old = datetime.now(UTC) - timedelta(minutes=10)
    replayed = dict(headers)
    replayed["webhook-timestamp"] = str(int(old.timestamp()))
    replayed["webhook-signature"] = Webhook(secret).sign(headers["webhook-id"], old, body.decode())
    with pytest.raises(InvalidSignature, match="too old"):
        verify_postlink_signature(body, replayed, secret)
    other = tolem_secret_like(secret)
    with pytest.raises(InvalidSignature):
        verify_postlink_signature(body, headers, other)
    with pytest.raises(InvalidSignature):
        verify_postlink_signature(body, headers, "not a secret")
    for missing in ("webhook-id", "webhook-timestamp", "webhook-signature"):
        without = {k: v for k, v in headers.items() if k != missing}
        with pytest.raises(InvalidSignature):
            verify_postlink_signature(body, without, secret)
    with pytest.raises(InvalidSignature):
        verify_postlink_signature(body, {}, secret)


def tolem_secret_like(secret: str) -> str:
    """Another well-formed whsec_ secret of the same length."""
    prefix, _, key = secret.partition("_")
    swapped = ("B" if key[0] == "A" else "A") + key[1:]
    return f"{prefix}_{swapped}"


# --- 3. the hosted page link, in real Chromium ---------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as b:
        yield b


def open_page(browser: Browser, link: str) -> tuple[Page, list[str]]:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems: list[str] = []

    def console(message: ConsoleMessage) -> None:
        if message.type == "error" or "Content Security Policy" in message.text:
            problems.append(message.text)

    page.on("console", console)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(link)
    return page, problems


def test_the_sdk_payform_link_pays_in_chromium(
    delivering: Gateway, receiver: Receiver, browser: Browser
) -> None:
    where = fresh_path()
    secret = f"page-{uuid.uuid4().hex}"
    request = order(
        Decimal("1234.50"),
        description="Заказ №7: чай & кофе 100% <b>",
        name="",
        email="payer@example.kz",
        post_link=receiver.url(where),
        secret_hash=secret,
    )
    with sdk(delivering.base_url) as client:
        link = client.payform_url(request)
        short = client.payform_url(order(), widget=True)
    assert link.startswith(f"{delivering.base_url}/payform/?params=")

    page, problems = open_page(browser, link)
    try:
        assert page.locator("#amount").inner_text() == "1\xa0234.50"  # grouped, as shown
        assert page.locator("#currency").inner_text() == "KZT"
        assert page.locator("#description").inner_text() == request.description
        page.click("#pan")
        page.keyboard.type("4405639704015096")
        page.click("#exp")
        page.keyboard.type("0125")
        page.click("#cvc")
        page.keyboard.type("815")
        page.fill("#name", "JON JONSON")
        page.click("#pay")
        page.wait_for_url("**/payform/result/*")
        assert problems == []
    finally:
        page.close()

    [received] = receiver.wait_for(where)
    postlink = parse_postlink(received.body)
    assert (postlink.invoice_id, postlink.approved) == (request.invoice_id, True)
    assert postlink.amount == Decimal("1234.50")
    assert postlink.description == request.description
    assert check_secret_hash(postlink, secret)
    with sdk(delivering.base_url) as client:
        assert client.status(request.invoice_id).id == postlink.id

    widget, problems = open_page(browser, short)
    try:
        assert widget.locator("main.payform.short").count() == 1
        assert widget.locator("#amount").inner_text() == "100.00"
        assert problems == []
    finally:
        widget.close()
