"""``EpayClient`` and ``AsyncEpayClient``: the core's calls over httpx, sync and async."""

from __future__ import annotations

import time
from collections.abc import Mapping
from decimal import Decimal
from types import TracebackType
from typing import Any, Self, TypedDict, TypeVar, Unpack

import anyio
import httpx
from cryptography.hazmat.primitives.asymmetric import rsa

from tolem.client._core import (
    Call,
    Core,
    Op,
    RetryPolicy,
    connection_error,
    judge,
    still_running,
)
from tolem.client._environment import Environment
from tolem.client._errors import EpayError
from tolem.client._models import (
    Card,
    ConfirmResult,
    OperationResult,
    Payment,
    PaymentRequest,
    SavedCard,
    Token,
    Transaction,
)

__all__ = ["AsyncEpayClient", "ClientOptions", "EpayClient"]

T = TypeVar("T")
Amount = Decimal | int | str


class ClientOptions(TypedDict, total=False):
    """Options of both clients.

    timeout: seconds for each HTTP request (default 30); with your own ``http_client``,
        its time-outs apply instead.
    retries, backoff: how often and how patiently to retry what is safe to retry
        (default 2 retries, 0.25 s doubling); see RetryPolicy.
    public_key: the gateway's PEM public key, so /public.rsa is never fetched.
    public_key_pin: ``sha256/…`` (key_fingerprint) the fetched key must have.
    idempotency_keys: send Idempotency-Key on POSTs (default: for tolem only).
    """

    timeout: float
    retries: int
    backoff: float
    public_key: str | bytes | None
    public_key_pin: str | None
    idempotency_keys: bool | None


class _Base:
    """What both clients share: configuration and the methods' documentation."""

    def __init__(
        self,
        environment: Environment | str,
        *,
        client_id: str,
        client_secret: str,
        terminal_id: str,
        **options: Unpack[ClientOptions],
    ) -> None:
        if isinstance(environment, str):
            environment = Environment.tolem(environment)
        self._core = Core(
            environment,
            client_id=client_id,
            client_secret=client_secret,
            terminal_id=terminal_id,
            public_key=options.get("public_key"),
            public_key_pin=options.get("public_key_pin"),
            idempotency_keys=options.get("idempotency_keys"),
        )
        self._retry = RetryPolicy(
            retries=options.get("retries", 2), backoff=options.get("backoff", 0.25)
        )
        self._timeout = options.get("timeout", 30.0)

    @property
    def environment(self) -> Environment:
        return self._core.environment

    @property
    def terminal_id(self) -> str:
        return self._core.terminal_id

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._core!r})"


class EpayClient(_Base):
    """ePay's merchant API, synchronous.

    ``environment`` is :data:`PRODUCTION`, :data:`TEST`, ``Environment.tolem(url)``, or
    a tolem base URL as a string. Each call raises an :class:`EpayError` subclass when
    the gateway refuses it; a declined payment raises a :class:`PaymentDeclined`.
    Use it as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        environment: Environment | str,
        *,
        client_id: str,
        client_secret: str,
        terminal_id: str,
        http_client: httpx.Client | None = None,
        **options: Unpack[ClientOptions],
    ) -> None:
        super().__init__(
            environment,
            client_id=client_id,
            client_secret=client_secret,
            terminal_id=terminal_id,
            **options,
        )
        self._owns_http = http_client is None
        self._http = http_client or httpx.Client(timeout=self._timeout)

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _send(self, call: Call) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = self._http.request(**call.httpx_arguments())
            except httpx.TransportError as error:
                delay = self._retry.after_error(call, error, attempt)
                if delay is None:
                    raise connection_error(call, error) from error
            else:
                delay = self._retry.after_response(call, response, attempt)
                if delay is None:
                    unknown = still_running(call, response)
                    if unknown is not None:
                        raise unknown
                    return response
            time.sleep(delay)
            attempt += 1

    def _run(self, op: Op[T]) -> T:
        call: Call | None = None
        try:
            call = next(op)
            while True:
                call = op.send(self._send(call))
        except StopIteration as done:
            result: T = done.value
            return result
        except EpayError as error:
            judge(error, call)
            raise
        finally:
            op.close()

    # --- the API (documented on the core) -------------------------------------------

    def token(self, order: PaymentRequest | None = None, *, scope: str = "payment") -> Token:
        """A token bound to ``order``; a service token (no invoice) without one."""
        return self._run(self._core.token(order, scope=scope))

    def service_token(self) -> Token:
        """The cached service token used for status, operations and cards."""
        return self._run(self._core.service_token())

    def public_key(self) -> rsa.RSAPublicKey:
        return self._run(self._core.public_key())

    def cryptogram(self, card: Card) -> str:
        """The card's cryptogram for this terminal, under the gateway's public key."""
        return self._run(self._core.cryptogram(card))

    def cryptopay(self, order: PaymentRequest, cryptogram: str, token: Token) -> Payment:
        return self._run(self._core.cryptopay(order, cryptogram, token))

    def pay(self, order: PaymentRequest, card: Card) -> Payment:
        """Token, cryptogram and cryptopay in one call. ``payment.needs_3ds``: see confirm."""
        return self._run(self._core.pay(order, card))

    def confirm(
        self, payment: Payment | str, pa_res: str, md: str, *, token: Token | None = None
    ) -> ConfirmResult:
        """Finish a 3-D Secure payment with the ACS's ``PaRes`` and ``MD``; ``payment``
        is the Payment pay() returned (its order token is used) or a transaction id."""
        return self._run(self._core.confirm(payment, pa_res, md, token))

    def pay_with_card(self, order: PaymentRequest, card_id: str) -> Payment:
        return self._run(self._core.pay_with_card(order, card_id))

    def payform_url(
        self, order: PaymentRequest, *, widget: bool = False, extra: Mapping[str, Any] | None = None
    ) -> str:
        return self._run(self._core.payform_url(order, widget=widget, extra=extra))

    def status(self, invoice_id: str) -> Transaction:
        return self._run(self._core.status(invoice_id))

    def charge(self, transaction_id: str, amount: Amount | None = None) -> OperationResult:
        return self._run(self._core.operation("charge", transaction_id, amount))

    def cancel(self, transaction_id: str) -> OperationResult:
        return self._run(self._core.operation("cancel", transaction_id))

    def refund(
        self,
        transaction_id: str,
        amount: Amount | None = None,
        *,
        external_id: str | None = None,
    ) -> OperationResult:
        return self._run(self._core.operation("refund", transaction_id, amount, external_id))

    def cards(self, account_id: str) -> list[SavedCard]:
        return self._run(self._core.cards(account_id))

    def deactivate_card(self, card_id: str) -> None:
        self._run(self._core.deactivate_card(card_id))


class AsyncEpayClient(_Base):
    """The same API as :class:`EpayClient`, for asyncio (or trio): every method awaits."""

    def __init__(
        self,
        environment: Environment | str,
        *,
        client_id: str,
        client_secret: str,
        terminal_id: str,
        http_client: httpx.AsyncClient | None = None,
        **options: Unpack[ClientOptions],
    ) -> None:
        super().__init__(
            environment,
            client_id=client_id,
            client_secret=client_secret,
            terminal_id=terminal_id,
            **options,
        )
        self._owns_http = http_client is None
        self._http = http_client or httpx.AsyncClient(timeout=self._timeout)

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _send(self, call: Call) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = await self._http.request(**call.httpx_arguments())
            except httpx.TransportError as error:
                delay = self._retry.after_error(call, error, attempt)
                if delay is None:
                    raise connection_error(call, error) from error
            else:
                delay = self._retry.after_response(call, response, attempt)
                if delay is None:
                    unknown = still_running(call, response)
                    if unknown is not None:
                        raise unknown
                    return response
            await anyio.sleep(delay)
            attempt += 1

    async def _run(self, op: Op[T]) -> T:
        call: Call | None = None
        try:
            call = next(op)
            while True:
                call = op.send(await self._send(call))
        except StopIteration as done:
            result: T = done.value
            return result
        except EpayError as error:
            judge(error, call)
            raise
        finally:
            op.close()

    async def token(self, order: PaymentRequest | None = None, *, scope: str = "payment") -> Token:
        return await self._run(self._core.token(order, scope=scope))

    async def service_token(self) -> Token:
        return await self._run(self._core.service_token())

    async def public_key(self) -> rsa.RSAPublicKey:
        return await self._run(self._core.public_key())

    async def cryptogram(self, card: Card) -> str:
        return await self._run(self._core.cryptogram(card))

    async def cryptopay(self, order: PaymentRequest, cryptogram: str, token: Token) -> Payment:
        return await self._run(self._core.cryptopay(order, cryptogram, token))

    async def pay(self, order: PaymentRequest, card: Card) -> Payment:
        return await self._run(self._core.pay(order, card))

    async def confirm(
        self, payment: Payment | str, pa_res: str, md: str, *, token: Token | None = None
    ) -> ConfirmResult:
        return await self._run(self._core.confirm(payment, pa_res, md, token))

    async def pay_with_card(self, order: PaymentRequest, card_id: str) -> Payment:
        return await self._run(self._core.pay_with_card(order, card_id))

    async def payform_url(
        self, order: PaymentRequest, *, widget: bool = False, extra: Mapping[str, Any] | None = None
    ) -> str:
        return await self._run(self._core.payform_url(order, widget=widget, extra=extra))

    async def status(self, invoice_id: str) -> Transaction:
        return await self._run(self._core.status(invoice_id))

    async def charge(self, transaction_id: str, amount: Amount | None = None) -> OperationResult:
        return await self._run(self._core.operation("charge", transaction_id, amount))

    async def cancel(self, transaction_id: str) -> OperationResult:
        return await self._run(self._core.operation("cancel", transaction_id))

    async def refund(
        self,
        transaction_id: str,
        amount: Amount | None = None,
        *,
        external_id: str | None = None,
    ) -> OperationResult:
        return await self._run(self._core.operation("refund", transaction_id, amount, external_id))

    async def cards(self, account_id: str) -> list[SavedCard]:
        return await self._run(self._core.cards(account_id))

    async def deactivate_card(self, card_id: str) -> None:
        await self._run(self._core.deactivate_card(card_id))
