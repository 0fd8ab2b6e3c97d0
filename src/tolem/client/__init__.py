"""tolem's Python SDK for ePay's merchant protocol: exact for the live ePay hosts and
for any tolem gateway.

    from tolem.client import Card, EpayClient, PaymentRequest, Environment

    with EpayClient(Environment.tolem("http://127.0.0.1:8000"), client_id="test",
                    client_secret="yF587AV9Ms94qN2QShFzVR3vFnWkhjbAK3sG",
                    terminal_id="67e34d63-102f-4bd1-898e-370781d0074d") as epay:
        order = PaymentRequest(invoice_id="000000001", amount=100, description="test",
                               name="JON JONSON")
        payment = epay.pay(order, Card.parse("4405639704015096", "01/25", "815"))

:class:`AsyncEpayClient` has the same methods, awaited. See docs/sdk.md.
"""

from __future__ import annotations

from tolem.client._clients import AsyncEpayClient, ClientOptions, EpayClient
from tolem.client._environment import PRODUCTION, TEST, Environment
from tolem.client._errors import (
    ApiError,
    AuthenticationError,
    CardRestricted,
    EpayConnectionError,
    EpayError,
    ExpiredCard,
    InsufficientFunds,
    InvalidCard,
    InvalidRequest,
    IssuerDeclined,
    IssuerUnavailable,
    LimitExceeded,
    LostOrStolenCard,
    MerchantNotPermitted,
    NotFound,
    PaymentDeclined,
    ProcessingError,
    ProtocolError,
    PublicKeyMismatch,
    Secure3DFailed,
    ServerError,
    error_for,
)
from tolem.client._helpers import (
    InvalidSignature,
    build_cryptogram,
    check_secret_hash,
    encode_params,
    key_fingerprint,
    load_public_key,
    parse_postlink,
    payform_url,
    secure3d_form,
    verify_postlink_signature,
)
from tolem.client._models import (
    Card,
    CardDataError,
    ConfirmResult,
    OperationResult,
    Payment,
    PaymentRequest,
    PostLink,
    SavedCard,
    Secure3D,
    StatusResult,
    Token,
    Transaction,
)

__all__ = [  # pinned by tests/test_client.py
    "PRODUCTION",
    "TEST",
    "ApiError",
    "AsyncEpayClient",
    "AuthenticationError",
    "Card",
    "CardDataError",
    "CardRestricted",
    "ClientOptions",
    "ConfirmResult",
    "Environment",
    "EpayClient",
    "EpayConnectionError",
    "EpayError",
    "ExpiredCard",
    "InsufficientFunds",
    "InvalidCard",
    "InvalidRequest",
    "InvalidSignature",
    "IssuerDeclined",
    "IssuerUnavailable",
    "LimitExceeded",
    "LostOrStolenCard",
    "MerchantNotPermitted",
    "NotFound",
    "OperationResult",
    "Payment",
    "PaymentDeclined",
    "PaymentRequest",
    "PostLink",
    "ProcessingError",
    "ProtocolError",
    "PublicKeyMismatch",
    "SavedCard",
    "Secure3D",
    "Secure3DFailed",
    "ServerError",
    "StatusResult",
    "Token",
    "Transaction",
    "build_cryptogram",
    "check_secret_hash",
    "encode_params",
    "error_for",
    "key_fingerprint",
    "load_public_key",
    "parse_postlink",
    "payform_url",
    "secure3d_form",
    "verify_postlink_signature",
]

# Tracebacks and reprs name the public module, not the private one a class lives in.
for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type) and _obj.__module__.startswith("tolem.client."):
        _obj.__module__ = __name__
del _name, _obj
