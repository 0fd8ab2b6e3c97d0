"""The SDK's guards against charging twice, hiding an outcome, and leaking secrets.

Most tests run against a real gateway. A few answer as the live ePay does where tolem
never does (a redirect from confirm, a decline with HTTP 200): those use an
``httpx.MockTransport`` standing in for the live hosts, which cannot run here.
"""

from __future__ import annotations

import dataclasses
import pickle
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.faulty_proxy import DROP, FaultyProxy, running_proxy
from tests.secure3d_support import VISA_3DS, hidden, otp
from tests.support import CLIENT_ID, CLIENT_SECRET, TERMINAL, Gateway, new_invoice
from tolem.client import (
    TEST,
    Card,
    Environment,
    EpayClient,
    EpayConnectionError,
    InsufficientFunds,
    Payment,
    PaymentRequest,
    ProcessingError,
    ProtocolError,
    Secure3DFailed,
    Token,
    load_public_key,
    parse_postlink,
)

VISA = Card.parse("4405639704015096", "01/25", "815")


def _order(**fields: Any) -> PaymentRequest:
    return PaymentRequest.model_validate(
        {"invoice_id": new_invoice(), "amount": 100, "description": "d", "name": "N", **fields}
    )


def _client(base_url: str | Environment, **options: Any) -> EpayClient:
    return EpayClient(
        base_url, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, terminal_id=TERMINAL, **options
    )


@pytest.fixture
def proxy(gateway: Gateway) -> Iterator[FaultyProxy]:
    with running_proxy(gateway.base_url) as running:
        yield running


# --- against the real gateway ---------------------------------------------------------


def test_confirm_uses_the_orders_own_token(gateway: Gateway) -> None:
    sent: list[str] = []

    def record(request: httpx.Request) -> None:
        if request.url.path == "/payment/confirm":
            sent.append(request.headers["authorization"])

    http = httpx.Client(timeout=30, event_hooks={"request": [record]})
    with http, _client(gateway.base_url, http_client=http) as client:
        payment = client.pay(_order(), Card.parse(*VISA_3DS))
        assert payment.needs_3ds and payment.order_token is not None
        s3d = payment.secure3d
        assert s3d is not None
        form = {"PaReq": s3d.pa_req, "MD": s3d.md, "TermUrl": "https://shop.example/t"}
        page = http.post(s3d.action, data=form).text
        answer = http.post(
            f"{gateway.base_url}/acs/pa/answer",
            data=form | {"action": "confirm", "code": otp(page)},
        ).text
        result = client.confirm(payment, hidden(answer, "PaRes"), hidden(answer, "MD"))
    assert result.status == "AUTH"
    assert sent == [f"Bearer {payment.order_token.access_token}"]
    assert payment.order_token.access_token not in repr(payment)
    assert "order_token" not in payment.model_dump()


def test_a_key_the_live_service_ignores_never_makes_a_post_repeatable(
    gateway: Gateway, proxy: FaultyProxy
) -> None:
    live_like = Environment("live-like", proxy.base_url, proxy.base_url, proxy.base_url + "/p/")
    request = _order()
    with _client(live_like, idempotency_keys=True, backoff=0.01) as client:
        proxy.fail("/payment/cryptopay", DROP)
        with pytest.raises(EpayConnectionError) as error:
            client.pay(request, VISA)
        assert error.value.outcome_unknown
        assert client.status(request.invoice_id).status == "AUTH"  # it had gone through
    [only] = proxy.seen("/payment/cryptopay")
    assert only.headers.get("idempotency-key")  # sent, as asked, but not relied on


def test_a_connection_that_never_opened_is_not_an_unknown_outcome() -> None:
    with (
        _client("http://127.0.0.1:9", retries=0) as client,
        pytest.raises(EpayConnectionError) as error,
    ):
        client.cryptopay(_order(), "cryptogram", Token(access_token="t"))
    assert not error.value.outcome_unknown  # nothing left this machine


@pytest.mark.parametrize("amount", ["abc", 0, -1, "1.001", "NaN", "Infinity", 1.5, True])
def test_operation_amounts_are_checked_before_anything_is_sent(
    gateway: Gateway, amount: Any
) -> None:
    with _client(gateway.base_url) as client:
        payment = client.pay(_order(), VISA)
        with pytest.raises(ValueError, match="amount"):
            client.charge(payment.id, amount)
        with pytest.raises(ValueError, match="amount"):
            client.refund(payment.id, amount)
        assert client.status(payment.invoice_id).status == "AUTH"


def test_secrets_stay_out_of_reprs(gateway: Gateway) -> None:
    with _client(gateway.base_url) as client:
        order = _order(secret_hash="s3cr3t-order-hash")
        token = client.token(order)
    postlink = parse_postlink(b'{"secret_hash":"s3cr3t-order-hash","code":"ok"}')
    for shown in (repr(order), str(order), repr(postlink), repr(token), str(token)):
        assert "s3cr3t-order-hash" not in shown and token.access_token not in shown


def test_a_card_cannot_be_dumped_copied_out_or_pickled() -> None:
    with pytest.raises(TypeError):
        vars(VISA)
    with pytest.raises(TypeError):
        dataclasses.asdict(VISA)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="pickled"):
        pickle.dumps(VISA)
    with pytest.raises(AttributeError):
        VISA.pan = "4111111111111111"
    assert "4405639704015096" not in repr(VISA) and "815" not in repr(VISA)


def test_a_weak_public_key_is_refused() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    pem = small.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(ProtocolError, match="1024 bits"):
        load_public_key(pem)


# --- answers only the live service gives ------------------------------------------------


def _live(handler: Callable[[httpx.Request], httpx.Response]) -> EpayClient:
    """A client for ePay's test hosts whose answers come from ``handler``."""

    def route(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/oauth2/token"):
            return httpx.Response(200, json={"access_token": "t", "expires_in": "7200"})
        return handler(request)

    http = httpx.Client(transport=httpx.MockTransport(route))
    return _client(TEST, http_client=http, public_key=_pem())


def _pem() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_a_decline_that_comes_with_http_200_is_still_a_decline() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"id": "t1", "code": 484, "status": "FAILED"})

    with _live(answer) as client, pytest.raises(InsufficientFunds) as error:
        client.pay(_order(), VISA)
    assert (error.value.code, error.value.transaction_id) == (484, "t1")

    def failed_without_code(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"id": "t2", "code": 0, "status": "FAILED"})

    with _live(failed_without_code) as client, pytest.raises(ProcessingError) as failed:
        client.pay(_order(), VISA)
    assert failed.value.code == 475


def test_confirm_reads_the_live_services_redirects() -> None:
    success = (
        "https://test-epay.homebank.kz/payform/success.html?amount=100&currency=KZT"
        "&invoiceID=123456789&reference=504355533594&cardid=c-1"
    )
    failure = "https://test-epay.homebank.kz/payform/?invoiceID=123456789&code=473&message=x"
    pages = iter([success, failure, "https://elsewhere.example/"])

    def answer(request: httpx.Request) -> httpx.Response:
        assert request.headers["accept"] == "application/json"
        return httpx.Response(302, headers={"Location": next(pages)})

    with _live(answer) as client:
        result = client.confirm("t1", "pares", "md")
        assert (result.code, result.reference, result.card_id) == (0, "504355533594", "c-1")
        assert (result.amount, result.invoice_id) == (Decimal(100), "123456789")
        with pytest.raises(Secure3DFailed):
            client.confirm("t1", "pares", "md")
        with pytest.raises(ProtocolError) as unknown:
            client.confirm("t1", "pares", "md")
        assert unknown.value.outcome_unknown


def test_an_operation_answered_with_a_page_is_not_a_success() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="<html>proxy says hi</html>")

    with _live(answer) as client, pytest.raises(ProtocolError, match="not JSON") as error:
        client.refund("t1", 10)
    assert error.value.outcome_unknown


def test_an_empty_operation_answer_is_a_success() -> None:
    # ePay: "Success: HTTP 200, empty body or a small JSON".
    with _live(lambda request: httpx.Response(200)) as client:
        assert client.charge("t1").code == 0


def test_payment_keeps_its_token_only_in_memory() -> None:
    payment = Payment.model_validate({"id": "t"})
    assert payment.order_token is None
    token = Token(access_token="abc")
    assert "abc" not in repr(token)
