"""The Python SDK's :class:`AsyncEpayClient` against a real ``tolem serve``.

The same calls as ``test_client.py``, awaited: each test runs its own event loop with
``asyncio.run`` and opens its own client inside it (an httpx.AsyncClient belongs to
one loop). Helpers, cards and expectations are shared with ``test_client.py``.
"""

from __future__ import annotations

import asyncio
import html
import re
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any, TypeVar
from urllib.parse import urljoin

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests import secure3d_support as s3d
from tests.support import TERMINAL, Gateway, free_port, new_invoice
from tests.test_client import (
    DECLINE_CLASSES,
    NOT_DECLINES,
    SERVICE_SCOPE,
    TERM_URL,
    UNCLASSED,
    VISA,
    account,
    acs_answer,
    assert_approved,
    assert_declined,
    card_for,
    client_options,
    form_post,
    order,
    payform_params,
    pem_of,
)
from tolem.client import (
    ApiError,
    AsyncEpayClient,
    AuthenticationError,
    Card,
    ConfirmResult,
    EpayConnectionError,
    EpayError,
    InsufficientFunds,
    InvalidRequest,
    NotFound,
    OperationResult,
    PaymentDeclined,
    ProcessingError,
    PublicKeyMismatch,
    SavedCard,
    Secure3D,
    Secure3DFailed,
    Token,
    Transaction,
    key_fingerprint,
    secure3d_form,
)
from tolem.client._reasons import RUSSIAN
from tolem.reasons import REASONS

T = TypeVar("T")


def run(gateway: Gateway, body: Callable[[AsyncEpayClient], Awaitable[T]], **options: Any) -> T:
    """``body(client)`` in a fresh event loop, with a client closed afterwards."""

    async def main() -> T:
        async with AsyncEpayClient(gateway.base_url, **client_options(**options)) as client:
            return await body(client)

    return asyncio.run(main())


async def raises(cls: type[EpayError], call: Awaitable[Any]) -> EpayError:
    """The exception ``call`` raises, which must be a ``cls``."""
    with pytest.raises(cls) as raised:
        await call
    return raised.value


async def pass_acs(gateway: Gateway, secure3d: Secure3D, *, fail: bool = False) -> tuple[str, str]:
    """The browser's part of 3-D Secure, from the SDK's form through the ACS, async."""
    action, fields = form_post(secure3d_form(secure3d, TERM_URL))
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=30) as http:
        page = await http.post(action, data=fields)
        assert page.status_code == 200, page.text
        answer_url, _ = form_post(page.text)
        posted = await http.post(urljoin(action, answer_url), data=acs_answer(page.text, fail=fail))
    assert posted.status_code == 200, posted.text
    term_url, result = form_post(posted.text)
    assert term_url == TERM_URL
    return result["PaRes"], result["MD"]


# --- tokens and the key -----------------------------------------------------------


def test_tokens(gateway: Gateway) -> None:
    async def body(epay: AsyncEpayClient) -> None:
        bound = await epay.token(order())
        assert isinstance(bound, Token)
        assert (bound.expires_in, bound.scope, bound.token_type) == (7200, "payment", "Bearer")
        assert isinstance(bound.expires_in, int)
        wider = await epay.token(order(), scope="webapi payment")
        assert wider.scope == "webapi payment"

        service = await epay.service_token()
        assert service.scope == SERVICE_SCOPE
        assert await epay.service_token() is service  # cached
        # Concurrent calls on a warm cache all get the cached token.
        assert all(
            t is service for t in await asyncio.gather(*(epay.service_token() for _ in range(5)))
        )

    run(gateway, body)


def test_a_wrong_secret(gateway: Gateway) -> None:
    async def body(epay: AsyncEpayClient) -> None:
        calls: list[Callable[[], Awaitable[Any]]] = [
            epay.service_token,
            lambda: epay.token(order()),
            lambda: epay.cards("x"),
        ]
        for call in calls:
            error = await raises(AuthenticationError, call())
            assert (error.status_code, error.message) == (401, "invalid client credentials")
            assert re.search("[\u0400-\u04ff]", error.message_ru), error.message_ru

    run(gateway, body, client_secret="wrong-secret")


def test_the_public_key(gateway: Gateway) -> None:
    async def body(epay: AsyncEpayClient) -> str:
        key = await epay.public_key()
        assert isinstance(key, rsa.RSAPublicKey)
        assert key.public_numbers() == gateway.public_key.public_numbers()
        assert await epay.public_key() is key
        return key_fingerprint(key)

    pin = run(gateway, body)

    async def pinned(epay: AsyncEpayClient) -> None:
        placed = order()
        assert_approved(await epay.pay(placed, VISA), placed)

    run(gateway, pinned, public_key_pin=pin)

    async def mismatched(epay: AsyncEpayClient) -> None:
        error = await raises(PublicKeyMismatch, epay.public_key())
        assert pin in error.message
        await raises(PublicKeyMismatch, epay.cryptogram(VISA))

    run(gateway, mismatched, public_key_pin="sha256/" + "B" * 43 + "=")


def test_a_given_key_is_never_fetched(gateway: Gateway) -> None:
    paths: list[str] = []

    async def record(request: httpx.Request) -> None:
        paths.append(request.url.path)

    async def main() -> None:
        async with (
            httpx.AsyncClient(timeout=30, event_hooks={"request": [record]}) as http,
            AsyncEpayClient(
                gateway.base_url,
                http_client=http,
                **client_options(public_key=pem_of(gateway.public_key)),
            ) as epay,
        ):
            placed = order()
            assert_approved(await epay.pay(placed, VISA), placed)
            assert not http.is_closed

    asyncio.run(main())
    assert paths == ["/oauth2/token", "/payment/cryptopay"]


def test_a_refused_connection() -> None:
    async def main() -> EpayError:
        nobody = f"http://127.0.0.1:{free_port()}"
        async with AsyncEpayClient(nobody, **client_options(retries=0)) as epay:
            return await raises(EpayConnectionError, epay.status("1"))

    error = asyncio.run(main())
    assert error.status_code is None and "ConnectError" in error.message
    assert error.message_ru == EpayConnectionError.default_ru


# --- paying -----------------------------------------------------------------------


def test_cryptogram_cryptopay_and_pay(gateway: Gateway) -> None:
    async def body(epay: AsyncEpayClient) -> None:
        placed = order(amount="99.99")
        token = await epay.token(placed)
        cryptogram = await epay.cryptogram(VISA)
        payment = await epay.cryptopay(placed, cryptogram, token)
        assert_approved(payment, placed)
        assert payment.amount == Decimal("99.99")

        orders = [order(amount=10 + i) for i in range(6)]
        payments = await asyncio.gather(*(epay.pay(o, VISA) for o in orders))
        for placed_one, paid in zip(orders, payments, strict=True):
            assert_approved(paid, placed_one)
        assert len({p.id for p in payments}) == len(orders)

    run(gateway, body)


def test_declines_raise_their_classes(gateway: Gateway) -> None:
    """Every reason code at once, concurrently: each payment's exception has the class
    the code belongs to (the highest code of each class here; test_client.py pays
    with every code of every class, one after another)."""
    expected: dict[int, type[EpayError]] = {max(cls.codes): cls for cls in DECLINE_CLASSES}
    expected |= dict.fromkeys(UNCLASSED, ProcessingError) | NOT_DECLINES

    async def decline(epay: AsyncEpayClient, code: int) -> None:
        placed = order()
        with pytest.raises(EpayError) as raised:
            await epay.pay(placed, card_for(code))
        assert_declined(raised.value, expected[code], code, placed)
        assert isinstance(raised.value, PaymentDeclined) is (code not in NOT_DECLINES)

    async def body(epay: AsyncEpayClient) -> None:
        await asyncio.gather(*(decline(epay, code) for code in expected))

    run(gateway, body)


def test_bad_requests(gateway: Gateway) -> None:
    async def body(epay: AsyncEpayClient) -> None:
        unnamed = order(name="")
        error = await raises(InvalidRequest, epay.pay(unnamed, VISA))
        assert (error.code, error.message) == (477, "name: is required")
        assert error.invoice_id == unnamed.invoice_id

        placed = order()
        await epay.pay(placed, VISA)
        again = await raises(ApiError, epay.pay(placed, VISA))
        assert type(again) is ApiError and again.code == 100

    run(gateway, body)


# --- 3-D Secure -------------------------------------------------------------------


def test_3ds(gateway: Gateway) -> None:
    async def body(epay: AsyncEpayClient) -> None:
        placed = order()
        payment = await epay.pay(placed, Card.parse(*s3d.MASTERCARD_3DS))
        assert payment.needs_3ds and payment.secure3d is not None
        page = secure3d_form(payment.secure3d, TERM_URL)
        assert f'value="{html.escape(payment.secure3d.pa_req)}"' in page
        pa_res, md = await pass_acs(gateway, payment.secure3d)
        result = await epay.confirm(payment.id, pa_res, md)
        assert isinstance(result, ConfirmResult)
        assert (result.code, result.status, result.id, result.secure) == (
            0,
            "AUTH",
            payment.id,
            True,
        )
        assert result.card_mask == Card.parse(*s3d.MASTERCARD_3DS).mask
        assert f"invoiceID={placed.invoice_id}" in result.redirect_url
        replay = await raises(ProcessingError, epay.confirm(payment.id, pa_res, md))
        assert (replay.code, replay.status_code) == (469, 400)

    run(gateway, body)


def test_3ds_declines(gateway: Gateway) -> None:
    async def then_484(epay: AsyncEpayClient) -> None:
        placed = order()
        payment = await epay.pay(placed, Card.parse(*s3d.VISA_3DS_THEN_484))
        assert payment.secure3d is not None
        pa_res, md = await pass_acs(gateway, payment.secure3d)
        error = await raises(InsufficientFunds, epay.confirm(payment.id, pa_res, md))
        assert (error.code, error.message, error.message_ru) == (484, REASONS[484], RUSSIAN[484])
        assert error.transaction_id == payment.id

    async def failed(epay: AsyncEpayClient) -> None:
        payment = await epay.pay(order(), Card.parse(*s3d.VISA_3DS))
        assert payment.secure3d is not None
        pa_res, md = await pass_acs(gateway, payment.secure3d, fail=True)
        error = await raises(Secure3DFailed, epay.confirm(payment.id, pa_res, md))
        assert (error.code, error.message, error.message_ru) == (473, REASONS[473], RUSSIAN[473])

    async def body(epay: AsyncEpayClient) -> None:
        await asyncio.gather(then_484(epay), failed(epay))

    run(gateway, body)


def test_3ds_confirm_with_the_payments_own_token(gateway: Gateway) -> None:
    async def body(epay: AsyncEpayClient) -> None:
        placed = order()
        token = await epay.token(placed)
        payment = await epay.cryptopay(
            placed, await epay.cryptogram(Card.parse(*s3d.VISA_3DS)), token
        )
        assert payment.secure3d is not None
        pa_res, md = await pass_acs(gateway, payment.secure3d)
        result = await epay.confirm(payment.id, pa_res, md, token=token)
        assert (result.code, result.status, result.id) == (0, "AUTH", payment.id)

    run(gateway, body)


# --- saved cards ------------------------------------------------------------------


def test_saved_cards(gateway: Gateway) -> None:
    async def body(epay: AsyncEpayClient) -> None:
        customer = account()
        assert await epay.cards(customer) == []
        first = order(card_save=True, account_id=customer)
        saved = await epay.pay(first, VISA)
        assert_approved(saved, first)
        [card] = await epay.cards(customer)
        assert isinstance(card, SavedCard)
        assert (card.id, card.card_mask, card.payment_available, card.account_id) == (
            saved.card_id,
            "440563...5096",
            True,
            customer,
        )
        assert card.terminal == TERMINAL

        repeat = order(account_id=customer)
        again = await epay.pay_with_card(repeat, saved.card_id)
        assert_approved(again, repeat)
        assert again.card_id == saved.card_id

        stranger = await raises(
            NotFound, epay.pay_with_card(order(account_id=account()), saved.card_id)
        )
        assert stranger.code == 1373

        await epay.deactivate_card(saved.card_id)
        assert await epay.cards(customer) == []
        gone = await raises(NotFound, epay.deactivate_card(saved.card_id))
        assert (gone.code, gone.status_code, gone.message_ru) == (1373, 400, RUSSIAN[1373])

    run(gateway, body)


# --- the hosted page --------------------------------------------------------------


def test_payform_url(gateway: Gateway) -> None:
    async def body(epay: AsyncEpayClient) -> None:
        description = "Chai & <i>sweets</i>"
        placed = order(amount="10.50", description=description)
        url = await epay.payform_url(placed)
        params = payform_params(url)
        assert (params["invoiceId"], params["amount"], params["description"]) == (
            placed.invoice_id,
            "10.5",  # as JavaScript writes 10.50
            description,
        )
        widget = await epay.payform_url(order(), widget=True)
        assert widget.endswith("&isShortForm=true")
        async with httpx.AsyncClient(timeout=30) as http:
            page, short = await asyncio.gather(http.get(url), http.get(widget))
        assert page.status_code == 200 and short.status_code == 200
        assert "Chai &amp; &lt;i&gt;sweets&lt;/i&gt;" in page.text
        assert "<i>sweets" not in page.text
        assert re.search(r'<span id="amount">10[.,]50?</span>', page.text), page.text

    run(gateway, body)


# --- status and operations --------------------------------------------------------


def test_status_and_operations(gateway: Gateway) -> None:
    async def body(epay: AsyncEpayClient) -> None:
        placed = order(amount=500)
        payment = await epay.pay(placed, VISA)
        transaction = await epay.status(placed.invoice_id)
        assert isinstance(transaction, Transaction)
        assert (transaction.id, transaction.status, transaction.amount) == (
            payment.id,
            "AUTH",
            Decimal(500),
        )
        assert transaction.reason_code == 0

        charged = await epay.charge(payment.id, "200.25")
        assert isinstance(charged, OperationResult)
        assert (charged.status, charged.amount_charged) == ("CHARGE", Decimal("200.25"))
        refunded = await epay.refund(payment.id, 50, external_id="async-refund-1")
        assert (refunded.status, refunded.amount_refunded) == ("CHARGE", Decimal(50))
        too_much = await raises(ApiError, epay.refund(payment.id, 500))
        assert too_much.code == 100
        rest = await epay.refund(payment.id)
        assert (rest.status, rest.amount) == ("REFUND", Decimal("150.25"))
        assert (await epay.status(placed.invoice_id)).status == "REFUND"

        other = order()
        fresh = await epay.pay(other, VISA)
        cancelled = await epay.cancel(fresh.id)
        assert (cancelled.code, cancelled.status) == (0, "CANCEL")
        assert (await epay.status(other.invoice_id)).status == "CANCEL"

        missing = await raises(NotFound, epay.status(new_invoice()))
        assert (missing.code, missing.message) == (102, "Invoice not found")
        unknown = await raises(ApiError, epay.charge("00000000-0000-0000-0000-000000000000"))
        assert unknown.message == "transaction not found"

    run(gateway, body)


def test_concurrent_status_calls_share_one_client(gateway: Gateway) -> None:
    async def body(epay: AsyncEpayClient) -> None:
        orders = [order() for _ in range(5)]
        await asyncio.gather(*(epay.pay(o, VISA) for o in orders))
        found = await asyncio.gather(*(epay.status(o.invoice_id) for o in orders))
        assert [t.invoice_id for t in found] == [o.invoice_id for o in orders]
        assert {t.status for t in found} == {"AUTH"}

    run(gateway, body)
