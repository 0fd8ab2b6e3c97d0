"""The SDK's one core, shared by :class:`EpayClient` and :class:`AsyncEpayClient`.

Every API call is written once, here, as a generator that yields the HTTP requests it
needs (:class:`Call`) and receives their answers (``httpx.Response``). The sync and the
async client only drive these generators, each with its own httpx client, and apply the
retry policy, so both behave alike by construction.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, TypeVar
from urllib.parse import parse_qs, quote, urlsplit

import httpx
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import BaseModel, ValidationError

from tolem.client._environment import Environment
from tolem.client._errors import (
    ApiError,
    EpayConnectionError,
    EpayError,
    NotFound,
    ProtocolError,
    ServerError,
    decline_class,
    error_for,
)
from tolem.client._helpers import build_cryptogram, load_public_key, payform_url
from tolem.client._models import (
    Card,
    ConfirmResult,
    OperationResult,
    Payment,
    PaymentRequest,
    SavedCard,
    StatusResult,
    Token,
    Transaction,
)
from tolem.client._reasons import english

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

#: The broad scope integrators ask for service tokens (EPAY.md section 3).
SERVICE_SCOPE = "webapi usermanagement email_send verification statement statistics payment"
USER_AGENT = "tolem-python"
#: A cached service token is renewed this many seconds before it expires.
TOKEN_MARGIN = 60.0
NO_CARDS = 1373
STATUS_FOUND = "100"
STATUS_NOT_FOUND = "102"

_SENT_NOTHING = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
_MAYBE_SENT = (httpx.ReadTimeout, httpx.WriteTimeout, httpx.ReadError, httpx.WriteError,
               httpx.RemoteProtocolError)  # fmt: skip
_SERVER_BUSY = frozenset({500, 502, 503, 504})
_TOO_MANY = 429
_STILL_RUNNING = 409


@dataclass(frozen=True)
class Call:
    """One HTTP request.

    ``idempotent``: running it twice does no harm (GETs, the token request).
    ``keyed``: a POST carrying an Idempotency-Key that the gateway honours (tolem), so
    a repeat after a lost answer replays the first answer instead of running again.
    """

    method: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, str] | None = None
    content: bytes | None = None
    form: Mapping[str, str] | None = None
    idempotent: bool = False
    keyed: bool = False

    def httpx_arguments(self) -> dict[str, Any]:
        arguments: dict[str, Any] = {
            "method": self.method,
            "url": self.url,
            "headers": dict(self.headers),
        }
        if self.params:
            arguments["params"] = dict(self.params)
        if self.content is not None:
            arguments["content"] = self.content
        if self.form is not None:  # multipart/form-data, as ePay's own examples send
            arguments["files"] = {name: (None, value) for name, value in self.form.items()}
        return arguments


Op = Generator[Call, httpx.Response, T]


@dataclass(frozen=True)
class RetryPolicy:
    """Retry only what cannot take effect twice.

    - A request that never left (refused connection, connect time-out): always.
    - A lost answer (read time-out, reset): idempotent and keyed calls (a keyed repeat
      gets the first answer replayed).
    - 5xx: idempotent calls only. tolem does not keep a 5xx answer under its key, so a
      keyed POST would run again, and a payment that committed before the 5xx would
      then be refused as a duplicate: the caller gets ``outcome_unknown`` instead.
    - 429: idempotent and keyed calls; 409 "still running": keyed calls, after at
      least a second, as the first attempt needs time to finish.
    Waits ``backoff * 2**attempt`` seconds, or the answer's Retry-After (at most 30 s).
    """

    retries: int = 2
    backoff: float = 0.25

    def after_error(self, call: Call, error: httpx.TransportError, attempt: int) -> float | None:
        if attempt >= self.retries:
            return None
        repeatable = call.idempotent or call.keyed
        if isinstance(error, _SENT_NOTHING) or (repeatable and isinstance(error, _MAYBE_SENT)):
            return self._wait(attempt)
        return None

    def after_response(self, call: Call, response: httpx.Response, attempt: int) -> float | None:
        if attempt >= self.retries:
            return None
        status = response.status_code
        if status == _STILL_RUNNING and call.keyed:
            return max(self._wait(attempt), 1.0)
        if (status in _SERVER_BUSY and call.idempotent) or (
            status == _TOO_MANY and (call.idempotent or call.keyed)
        ):
            after = response.headers.get("retry-after", "")
            if after.isdigit():
                return min(float(after), 30.0)
            return self._wait(attempt)
        return None

    def _wait(self, attempt: int) -> float:
        return float(self.backoff * 2**attempt)


def still_running(call: Call, response: httpx.Response) -> EpayError | None:
    """The last answer to a keyed POST was tolem's 409 "still running": its outcome is
    unknown, as after a lost answer, so it is reported the same way."""
    if response.status_code == _STILL_RUNNING and call.keyed:
        return EpayConnectionError(
            "the first attempt of this request is still running at the gateway; its outcome "
            "is not known yet (ask status() later)",
            status_code=_STILL_RUNNING,
            body=decode(response) or {},
            outcome_unknown=True,
        )
    return None


def connection_error(call: Call, error: httpx.TransportError) -> EpayError:
    maybe_sent = not isinstance(error, _SENT_NOTHING)
    return EpayConnectionError(
        f"{type(error).__name__}: {error or 'no answer'}",
        outcome_unknown=maybe_sent and not call.idempotent,
    )


def judge(error: EpayError, call: Call | None) -> None:
    """Mark an error raised while reading the answer to a money-moving call whose
    outcome it does not tell: a 5xx, or an answer that is not ePay's."""
    if call is not None and not call.idempotent and isinstance(error, ServerError | ProtocolError):
        error.outcome_unknown = True


def _json_default(value: object) -> object:
    if isinstance(value, Decimal):
        # A JSON number, not a string: ePay wants "amount": 100. Amounts have at most
        # two decimal places, which a float's shortest repr keeps exactly.
        return int(value) if value == value.to_integral_value() else float(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def json_bytes(data: Any) -> bytes:
    return json.dumps(data, default=_json_default, separators=(",", ":")).encode("utf-8")


def decode(response: httpx.Response) -> Any:
    """The answer's JSON (floats as Decimal), or None for an empty or non-JSON body."""
    if not response.content.strip():
        return None
    try:
        return json.loads(response.content, parse_float=Decimal)
    except ValueError:
        return None


def check(response: httpx.Response) -> Any:
    """The decoded answer of a 2xx (None if empty); an :class:`EpayError` for anything
    else, :class:`ProtocolError` for a 2xx that is not JSON."""
    body = decode(response)
    if response.status_code < 300 and body is None and response.content.strip():
        kind = response.headers.get("content-type", "no content type")
        raise ProtocolError(f"HTTP {response.status_code} answer is not JSON ({kind})")
    if response.status_code >= 300:
        if not isinstance(body, dict):
            text = response.text.strip()[:200]
            body = {"message": text or response.reason_phrase or f"HTTP {response.status_code}"}
        raise error_for(response.status_code, body)
    return body


def model(cls: type[M], data: Any) -> M:
    if not isinstance(data, dict):
        raise ProtocolError(f"expected a JSON object for {cls.__name__}, got {type(data).__name__}")
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ProtocolError(f"{cls.__name__}: {exc}", body=data) from None


def _segment(value: str, what: str) -> str:
    if not value:
        raise ValueError(f"{what} must not be empty")
    return quote(value, safe="")


class Core:
    """Configuration, caches and every call of the protocol, independent of I/O."""

    def __init__(
        self,
        environment: Environment,
        *,
        client_id: str,
        client_secret: str,
        terminal_id: str,
        public_key: str | bytes | None = None,
        public_key_pin: str | None = None,
        idempotency_keys: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.environment = environment
        self.client_id = client_id
        self.client_secret = client_secret
        self.terminal_id = terminal_id
        self.public_key_pin = public_key_pin
        if idempotency_keys is None:
            idempotency_keys = environment.is_tolem
        self.idempotency_keys = idempotency_keys
        self._clock = clock
        self._service: tuple[Token, float] | None = None
        self._key: rsa.RSAPublicKey | None = (
            load_public_key(public_key, pin=public_key_pin) if public_key is not None else None
        )

    def __repr__(self) -> str:  # never the secret
        return f"<{self.environment.name} {self.environment.api_url} client_id={self.client_id!r}>"

    # --- building requests ----------------------------------------------------------

    def _post(
        self,
        path: str,
        token: Token,
        body: Any = None,
        *,
        params: Mapping[str, str] | None = None,
    ) -> Call:
        headers = {
            "Authorization": f"Bearer {token.access_token}",
            "User-Agent": USER_AGENT,
            "Accept": "application/json",  # confirm answers a page to browsers
        }
        content = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            content = json_bytes(body)
        if self.idempotency_keys:
            headers["Idempotency-Key"] = str(uuid.uuid4())  # the same on every retry
        return Call(
            "POST",
            self.environment.api(path),
            headers,
            params=params,
            content=content,
            # Only tolem honours the key: elsewhere a repeat would run the request again.
            keyed=self.idempotency_keys and self.environment.is_tolem,
        )

    def _get(self, path: str, token: Token | None = None) -> Call:
        headers = {"User-Agent": USER_AGENT}
        if token is not None:
            headers["Authorization"] = f"Bearer {token.access_token}"
        return Call("GET", self.environment.api(path), headers, idempotent=True)

    # --- tokens and the key ---------------------------------------------------------

    def token(self, order: PaymentRequest | None = None, *, scope: str = "payment") -> Op[Token]:
        """A token bound to ``order`` (invoice, amount, currency, links, secret_hash), or a
        service token (no invoice) when ``order`` is None."""
        form = {
            "grant_type": "client_credentials",
            "scope": scope,
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "terminal": self.terminal_id,
        }
        if order is not None:
            form |= {
                "invoiceID": order.invoice_id,
                "amount": format(order.amount.normalize(), "f"),
                "currency": order.currency,
            }
            for name, value in (
                ("postLink", order.post_link),
                ("failurePostLink", order.failure_post_link),
                ("secret_hash", order.secret_hash),
            ):
                if value:
                    form[name] = value
        response = yield Call(
            "POST",
            self.environment.token_url(),
            {"User-Agent": USER_AGENT},
            form=form,
            idempotent=True,  # another token is harmless
        )
        return model(Token, check(response))

    def service_token(self) -> Op[Token]:
        """A service token for status, operations and cards, cached until shortly
        before it expires."""
        if self._service is not None and self._service[1] > self._clock():
            return self._service[0]
        started = self._clock()
        token = yield from self.token(scope=SERVICE_SCOPE)
        self._service = (token, started + max(token.expires_in - TOKEN_MARGIN, 0))
        return token

    def _with_service_token(self, build: Callable[[Token], Call]) -> Op[httpx.Response]:
        """Send ``build(token)``; if the cached token was refused (expired, or the
        gateway's keys changed), get a fresh one and send once more."""
        cached = self._service is not None and self._service[1] > self._clock()
        token = yield from self.service_token()
        response = yield build(token)
        if response.status_code == 401 and cached:
            self._service = None
            token = yield from self.service_token()
            response = yield build(token)
        return response

    def public_key(self) -> Op[rsa.RSAPublicKey]:
        """The gateway's cryptogram key (``/public.rsa``), fetched once and checked
        against ``public_key_pin`` when one is set."""
        if self._key is None:
            response = yield self._get("public.rsa")
            if response.status_code != 200:
                check(response)
                raise ProtocolError(f"public.rsa answered HTTP {response.status_code}")
            self._key = load_public_key(response.content, pin=self.public_key_pin)
        return self._key

    def cryptogram(self, card: Card) -> Op[str]:
        key = yield from self.public_key()
        return build_cryptogram(key, card, self.terminal_id)

    # --- payments -------------------------------------------------------------------

    def cryptopay(self, order: PaymentRequest, cryptogram: str, token: Token) -> Op[Payment]:
        response = yield self._post(
            "payment/cryptopay", token, {**order.body(), "cryptogram": cryptogram}
        )
        return _payment(response, token)

    def pay(self, order: PaymentRequest, card: Card) -> Op[Payment]:
        """Token for the order, cryptogram, cryptopay: the whole host-to-host payment."""
        token = yield from self.token(order)
        cryptogram = yield from self.cryptogram(card)
        return (yield from self.cryptopay(order, cryptogram, token))

    def confirm(
        self, payment: Payment | str, pa_res: str, md: str, token: Token | None = None
    ) -> Op[ConfirmResult]:
        """Finish a 3-D Secure payment. With a :class:`Payment` from this client, the
        order's own token is used ("for each operation use the original token");
        with a transaction id, ``token`` or else the service token."""
        if isinstance(payment, Payment):
            token = token or payment.order_token
            transaction_id = payment.id
        else:
            transaction_id = payment
        body = {"ID": transaction_id, "PaRes": pa_res, "MD": md}
        if token is None:
            response = yield from self._with_service_token(
                lambda t: self._post("payment/confirm", t, body)
            )
        else:
            response = yield self._post("payment/confirm", token, body)
        if response.is_redirect:  # what ePay's confirm answers a browser
            return _confirm_redirect(response)
        result = model(ConfirmResult, check(response))
        if result.code != 0:  # the payment was refused after 3-D Secure: HTTP 200 still
            raise _declined(result.code, result.message, response)
        return result

    def pay_with_card(self, order: PaymentRequest, card_id: str) -> Op[Payment]:
        """Pay with a saved card (``POST /payments/cards/auth``); needs ``account_id``."""
        token = yield from self.token(order, scope=SERVICE_SCOPE)
        body = {
            **order.body(),
            "terminalId": self.terminal_id,
            "paymentType": "cardId",
            "cardId": {"id": card_id},
        }
        response = yield self._post("payments/cards/auth", token, body)
        return _payment(response, token)

    def payform_url(
        self, order: PaymentRequest, *, widget: bool = False, extra: Mapping[str, Any] | None = None
    ) -> Op[str]:
        """A token for the order and the hosted page's address that ``halyk.pay()`` opens."""
        token = yield from self.token(order)
        return payform_url(
            self.environment.payform_url,
            order,
            token,
            terminal_id=self.terminal_id,
            widget=widget,
            extra=extra,
        )

    # --- after the payment ----------------------------------------------------------

    def status(self, invoice_id: str) -> Op[Transaction]:
        """The newest payment of ``invoice_id`` on this terminal; NotFound if none."""
        path = f"check-status/payment/transaction/{_segment(invoice_id, 'invoice_id')}"
        response = yield from self._with_service_token(lambda t: self._get(path, t))
        body = decode(response)
        if not isinstance(body, dict) or "resultCode" not in body:
            check(response)
            raise ProtocolError(
                "check-status answered without resultCode",
                body=body if isinstance(body, dict) else {},
            )
        result = model(StatusResult, body)
        if result.result_code == STATUS_FOUND and result.transaction is not None:
            return result.transaction
        cls = NotFound if result.result_code == STATUS_NOT_FOUND else ApiError
        raise cls(
            result.result_message or f"resultCode {result.result_code}",
            status_code=response.status_code,
            code=int(result.result_code) if result.result_code.isdigit() else None,
            body=body,
        )

    def operation(
        self,
        kind: str,
        transaction_id: str,
        amount: Decimal | int | str | None = None,
        external_id: str | None = None,
    ) -> Op[OperationResult]:
        path = f"operation/{_segment(transaction_id, 'transaction_id')}/{kind}"
        params: dict[str, str] = {}
        if amount is not None:
            params["amount"] = format(operation_amount(amount).normalize(), "f")
        if external_id:
            params["externalID"] = external_id
        response = yield from self._with_service_token(
            lambda t: self._post(path, t, params=params or None)
        )
        body = check(response)
        return model(OperationResult, body if isinstance(body, dict) else {})

    def cards(self, account_id: str) -> Op[list[SavedCard]]:
        """The customer's saved cards; an empty list when there are none (code 1373)."""
        path = f"cards/{_segment(account_id, 'account_id')}"
        response = yield from self._with_service_token(lambda t: self._get(path, t))
        body = decode(response)
        if isinstance(body, dict) and str(body.get("code")) == str(NO_CARDS):
            return []
        body = check(response)
        if not isinstance(body, list):
            raise ProtocolError("the card list is not a JSON array")
        return [model(SavedCard, item) for item in body]

    def deactivate_card(self, card_id: str) -> Op[None]:
        path = f"card/deactivate/{_segment(card_id, 'card_id')}"
        response = yield from self._with_service_token(lambda t: self._post(path, t))
        check(response)


_UNDECIDED = ("", "NEW")
_REFUSED = frozenset({"FAILED", "REJECT", "3D"})
#: "Transaction unsuccessful": for a refusal that names no reason code.
_UNSUCCESSFUL = 475


def _declined(code: int, message: str, response: httpx.Response) -> EpayError:
    code = code or _UNSUCCESSFUL
    body = decode(response)
    return decline_class(code)(
        message or english(code) or "declined",
        status_code=response.status_code,
        code=code,
        body=body if isinstance(body, dict) else {},
    )


def _payment(response: httpx.Response, token: Token) -> Payment:
    """A payment answer. A refusal is raised even when it comes with HTTP 200."""
    payment = model(Payment, check(response))
    if payment.code != 0 or payment.status in _REFUSED:
        raise _declined(payment.code, str((payment.model_extra or {}).get("message", "")), response)
    payment._order_token = token
    return payment


def _confirm_redirect(response: httpx.Response) -> ConfirmResult:
    """ePay's confirm answers with a redirect: to the success page (``reference``) or to
    the error page (``code`` / ``errorCode`` and ``message``)."""
    location = response.headers.get("location", "")
    query = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
    code = query.get("code") or query.get("errorCode")
    if code and code.isdigit() and int(code) != 0:
        raise _declined(int(code), query.get("message", ""), response)
    if query.get("reference"):
        fields = {"invoiceID": "invoiceID", "cardID": "cardid", "amount": "amount",
                  "currency": "currency", "reference": "reference"}  # fmt: skip
        found = {name: query[key] for name, key in fields.items() if query.get(key)}
        return model(ConfirmResult, {"code": 0, "message": "success", "redirectUrl": location,
                                     **found})  # fmt: skip
    raise ProtocolError(f"confirm redirected to {location!r}", outcome_unknown=True)


def operation_amount(value: Decimal | int | str) -> Decimal:
    """An operation's amount: positive, finite, at most two decimals; never a float."""
    if isinstance(value, float | bool):
        raise ValueError("amount: give a Decimal, an int or a string, not a float")
    try:
        amount = Decimal(value)
    except ArithmeticError:
        raise ValueError(f"amount: {value!r} is not a number") from None
    if not amount.is_finite() or amount <= 0 or int(amount.normalize().as_tuple().exponent) < -2:
        raise ValueError(f"amount: {value!r} must be positive with at most two decimals")
    return amount
