"""The SDK's exceptions: one base carrying the HTTP status, ePay code and message.

EpayError                    status_code, code, message, message_ru, body
├── EpayConnectionError      no HTTP answer (refused, reset, timed out)
├── ProtocolError            an answer that is not what ePay sends
├── PublicKeyMismatch        the gateway's key is not the pinned one
├── AuthenticationError      401: wrong credentials, or a token that is bad or expired
├── NotFound                 404, 522, status 102: no such transaction, card or invoice
├── ApiError                 a refused request (code 100, a malformed field, …)
│   └── InvalidRequest       477: a field is missing or malformed
├── ServerError              5xx
└── PaymentDeclined          a payment refused with a reason code
    ├── InsufficientFunds    484
    ├── ExpiredCard          478, 485
    ├── InvalidCard          457, 471, 472, 524, 525
    ├── Secure3DFailed       455, 473, 496, 499, 1654
    ├── CardRestricted       456, 465, 467, 479, 486, 489, 490, 492, 495, 2092
    ├── LostOrStolenCard     481, 482, 483
    ├── LimitExceeded        488, 491, 505, 529
    ├── IssuerDeclined       462, 463, 466, 480, 521, 523, 527
    ├── IssuerUnavailable    458, 459, 476, 493, 494, 497, 500, 502, 503, 504
    ├── MerchantNotPermitted 464, 487
    └── ProcessingError      every other reason code
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from tolem.client._reasons import english, russian

__all__ = [
    "ApiError",
    "AuthenticationError",
    "CardRestricted",
    "EpayConnectionError",
    "EpayError",
    "ExpiredCard",
    "InsufficientFunds",
    "InvalidCard",
    "InvalidRequest",
    "IssuerDeclined",
    "IssuerUnavailable",
    "LimitExceeded",
    "LostOrStolenCard",
    "MerchantNotPermitted",
    "NotFound",
    "PaymentDeclined",
    "ProcessingError",
    "ProtocolError",
    "PublicKeyMismatch",
    "Secure3DFailed",
    "ServerError",
    "error_for",
]


class EpayError(Exception):
    """Something the gateway refused or could not answer.

    ``status_code`` is the HTTP status (None without an answer), ``code`` the ePay code
    (a reason code, 100 for an API error, or None), ``message`` the gateway's own text
    (English), ``message_ru`` the same in Russian, ``body`` the decoded answer, and
    ``outcome_unknown`` whether the request may have taken effect all the same.
    """

    #: Russian text when the code has none of its own.
    default_ru: ClassVar[str] = "Ошибка платёжного шлюза"

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        code: int | None = None,
        message_ru: str | None = None,
        body: Mapping[str, Any] | None = None,
        outcome_unknown: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.code = code
        self.message_ru = message_ru or russian(code) or self.default_ru
        self.body: dict[str, Any] = dict(body or {})
        #: True when a request that changes money (a payment, confirm, an operation)
        #: may have been carried out, but no usable answer came back: a lost answer, a
        #: 5xx, an answer that is not ePay's, or a request still running. Ask
        #: ``status()`` before trying again with other data.
        self.outcome_unknown = outcome_unknown

    @property
    def transaction_id(self) -> str:
        """The transaction's ``id`` when the answer names one (a declined payment does)."""
        return str(self.body.get("id") or "")

    @property
    def invoice_id(self) -> str:
        for name in ("invoiceId", "invoiceID"):
            if self.body.get(name):
                return str(self.body[name])
        return ""

    def __str__(self) -> str:
        parts = [str(self.code)] if self.code is not None else []
        parts.append(self.message)
        if self.status_code is not None:
            parts.append(f"(HTTP {self.status_code})")
        return " ".join(parts)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status_code={self.status_code!r}, code={self.code!r}, "
            f"message={self.message!r})"
        )


class EpayConnectionError(EpayError):
    default_ru = "Нет связи с платёжным шлюзом"


class ProtocolError(EpayError):
    default_ru = "Непонятный ответ платёжного шлюза"


class PublicKeyMismatch(EpayError):
    default_ru = "Открытый ключ шлюза не совпадает с закреплённым"


class AuthenticationError(EpayError):
    default_ru = "Неверные учётные данные или токен"


class NotFound(EpayError):
    default_ru = "Не найдено"


class ApiError(EpayError):
    default_ru = "Запрос отклонён"


class InvalidRequest(ApiError):
    default_ru = "Ошибка формата"


class ServerError(EpayError):
    default_ru = "Внутренняя ошибка платёжного шлюза"


class PaymentDeclined(EpayError):
    """A payment refused; ``code`` is its ePay reason code (EPAY.md section 11)."""

    codes: ClassVar[frozenset[int]] = frozenset()
    default_ru = "Платёж отклонён"


class InsufficientFunds(PaymentDeclined):
    codes = frozenset({484})


class ExpiredCard(PaymentDeclined):
    codes = frozenset({478, 485})


class InvalidCard(PaymentDeclined):
    codes = frozenset({457, 471, 472, 524, 525})


class Secure3DFailed(PaymentDeclined):
    codes = frozenset({455, 473, 496, 499, 1654})


class CardRestricted(PaymentDeclined):
    codes = frozenset({456, 465, 467, 479, 486, 489, 490, 492, 495, 2092})


class LostOrStolenCard(PaymentDeclined):
    codes = frozenset({481, 482, 483})


class LimitExceeded(PaymentDeclined):
    codes = frozenset({488, 491, 505, 529})


class IssuerDeclined(PaymentDeclined):
    codes = frozenset({462, 463, 466, 480, 521, 523, 527})


class IssuerUnavailable(PaymentDeclined):
    """The issuer or the network did not answer: the same payment may pass later."""

    codes = frozenset({458, 459, 476, 493, 494, 497, 500, 502, 503, 504})


class MerchantNotPermitted(PaymentDeclined):
    codes = frozenset({464, 487})


class ProcessingError(PaymentDeclined):
    """Every other reason code: 454, 460, 461, 469, 470, 475, 498, 501, 526, …"""


_DECLINES: tuple[type[PaymentDeclined], ...] = (
    InsufficientFunds,
    ExpiredCard,
    InvalidCard,
    Secure3DFailed,
    CardRestricted,
    LostOrStolenCard,
    LimitExceeded,
    IssuerDeclined,
    IssuerUnavailable,
    MerchantNotPermitted,
)
_DECLINE_BY_CODE: dict[int, type[PaymentDeclined]] = {
    code: cls for cls in _DECLINES for code in cls.codes
}

#: Codes that say "not found" rather than "declined": record not found, no saved cards.
_NOT_FOUND_CODES = frozenset({522, 1373})
API_ERROR = 100
FORMAT_ERROR = 477


def decline_class(code: int) -> type[PaymentDeclined]:
    return _DECLINE_BY_CODE.get(code, ProcessingError)


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def error_for(status_code: int, body: Mapping[str, Any] | None) -> EpayError:
    """The exception for an answer: its class from the HTTP status and ePay code."""
    body = body or {}
    code = _as_int(body.get("code"))
    if code is None:
        code = _as_int(body.get("reasonCode"))
    message = str(
        body.get("message")
        or body.get("error_description")
        or body.get("resultMessage")
        or english(code)
        or f"HTTP {status_code}"
    ).strip()  # the live service writes " Not permitted to merchant"
    kwargs: dict[str, Any] = {"status_code": status_code, "code": code, "body": body}
    cls: type[EpayError]
    if status_code == 401 or body.get("error") == "invalid_client":
        cls = AuthenticationError
    elif status_code >= 500:
        cls = ServerError
    elif status_code == 404 or code in _NOT_FOUND_CODES:
        cls = NotFound
    elif code == FORMAT_ERROR:
        cls = InvalidRequest
    elif code is not None and code != API_ERROR and english(code) is not None:
        cls = decline_class(code)
    else:
        cls = ApiError
    return cls(message, **kwargs)
