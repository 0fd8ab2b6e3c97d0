"""What a shop builds around the API calls: cryptograms, payform links, the 3-D Secure
form and postLink checks. None of these talk to the network."""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
from collections.abc import Mapping
from decimal import Decimal
from typing import Any
from urllib.parse import quote, urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from pydantic import ValidationError

from tolem.client._errors import EpayError, ProtocolError, PublicKeyMismatch
from tolem.client._models import Card, PaymentRequest, PostLink, Secure3D, Token
from tolem.payform.lzstring import compress_to_encoded_uri_component

__all__ = [
    "InvalidSignature",
    "build_cryptogram",
    "check_secret_hash",
    "encode_params",
    "key_fingerprint",
    "load_public_key",
    "parse_postlink",
    "payform_url",
    "secure3d_form",
    "verify_postlink_signature",
]


# --- the public key and the cryptogram ---------------------------------------------

#: ePay's keys are 4096 bits, tolem's sandbox makes 2048 to 4096.
MIN_KEY_BITS = 2048


def load_public_key(pem: bytes | str, *, pin: str | None = None) -> rsa.RSAPublicKey:
    """An RSA public key from PEM; with ``pin`` (see :func:`key_fingerprint`), only that one."""
    data = pem.encode("ascii") if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise ProtocolError(f"public key is not PEM: {exc}") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise ProtocolError("public key is not RSA")
    if key.key_size < MIN_KEY_BITS:  # a cryptogram under a weak key is card data in clear
        raise ProtocolError(f"public key has {key.key_size} bits; at least {MIN_KEY_BITS} needed")
    if pin is not None and not hmac.compare_digest(key_fingerprint(key), pin):
        raise PublicKeyMismatch(
            f"the gateway's public key {key_fingerprint(key)} is not the pinned {pin}"
        )
    return key


def key_fingerprint(key: rsa.RSAPublicKey) -> str:
    """``sha256/`` + base64 SHA-256 of the key's SubjectPublicKeyInfo (as HPKP pins)."""
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256/" + base64.b64encode(hashlib.sha256(der).digest()).decode("ascii")


def build_cryptogram(key: rsa.RSAPublicKey, card: Card, terminal_id: str) -> str:
    """RSA PKCS#1 v1.5 over ``{"hpan","expDate","cvc","terminalId"}``, standard base64."""
    content = {"hpan": card.pan, "expDate": card.exp, "cvc": card.cvc, "terminalId": terminal_id}
    return encrypt_json(key, content)


def encrypt_json(key: rsa.RSAPublicKey, content: Mapping[str, Any]) -> str:
    plain = json.dumps(content, separators=(",", ":")).encode("utf-8")
    return base64.b64encode(key.encrypt(plain, padding.PKCS1v15())).decode("ascii")


# --- the hosted payment page --------------------------------------------------------


def _js_string(value: Any) -> str:
    """``"" + value`` as JavaScript writes it, for the values a payment object holds."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")  # 100.50 is 100.5 in JavaScript
    return str(value)


#: What JavaScript's encodeURIComponent leaves alone besides letters and digits.
_URI_SAFE = "-_.!~*'()"


def encode_params(params: Mapping[str, Any]) -> str:
    """payment-api.js's ``encodeParams``: ``key=encodeURIComponent(value)`` joined by ``&``;
    a nested mapping (``auth``) becomes an encoded query string of its own."""
    pairs = []
    for name, value in params.items():
        if not name:
            continue
        text = encode_params(value) if isinstance(value, Mapping) else _js_string(value)
        pairs.append(f"{name}={quote(text, safe=_URI_SAFE)}")
    return "&".join(pairs)


def payform_url(
    page_url: str,
    order: PaymentRequest,
    token: Token,
    *,
    terminal_id: str,
    widget: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """The address ``halyk.pay(paymentObject)`` opens, byte for byte.

    The payment object holds the order's fields, ``terminal`` and ``auth`` (the whole
    token answer). ``widget`` adds ``&isShortForm=true`` as ``showPaymentWidget`` does.
    """
    body = order.body()
    if not order.name:
        del body["name"]
    params: dict[str, Any] = {**body, "terminal": terminal_id, **(extra or {})}
    params["auth"] = token.as_auth()
    link = f"{page_url}?params={compress_to_encoded_uri_component(encode_params(params))}"
    return link + ("&isShortForm=true" if widget else "")


# --- 3-D Secure ---------------------------------------------------------------------

_WAIT = {
    "rus": "Ожидайте ответа!",
    "kaz": "Жауап күтіңіз!",
    "eng": "Wait for an answer!",
}
_CONTINUE = {"rus": "Продолжить", "kaz": "Жалғастыру", "eng": "Continue"}
_HTML_LANG = {"rus": "ru", "kaz": "kk", "eng": "en"}


def _lang(language: str) -> str:
    lowered = language.lower()
    if lowered in ("kaz", "kz", "kk"):
        return "kaz"
    if lowered in ("eng", "en"):
        return "eng"
    return "rus"


def secure3d_form(
    secure3d: Secure3D, term_url: str, *, language: str = "rus", nonce: str | None = None
) -> str:
    """The page that sends the cardholder to the issuer's ACS: a form posting ``PaReq``,
    ``MD`` and ``TermUrl`` to ``action``, submitted by a script on load (and a button
    when script is off).

    Every value is HTML-escaped, and ``action`` must be an http(s) address. If your
    pages carry a Content-Security-Policy, pass its ``nonce`` (or allow
    ``'unsafe-inline'`` scripts) and allow the ACS in ``form-action``.
    """
    if urlsplit(secure3d.action).scheme not in ("http", "https"):
        raise ValueError("secure3D action is not an http(s) address")
    lang = _lang(language)
    esc = html.escape
    script_nonce = f' nonce="{esc(nonce)}"' if nonce else ""
    return (
        "<!doctype html>\n"
        f'<html lang="{_HTML_LANG[lang]}"><head>'
        '<meta charset="utf-8"><meta name="viewport" content="width=device-width">'
        "<title>3-D Secure</title></head>\n"
        f"<body><p>{esc(_WAIT[lang])}</p>\n"
        f'<form method="post" action="{esc(secure3d.action)}">\n'
        f'<input type="hidden" name="PaReq" value="{esc(secure3d.pa_req)}">\n'
        f'<input type="hidden" name="MD" value="{esc(secure3d.md)}">\n'
        f'<input type="hidden" name="TermUrl" value="{esc(term_url)}">\n'
        f'<noscript><button type="submit">{esc(_CONTINUE[lang])}</button></noscript>\n'
        "</form>\n"
        f"<script{script_nonce}>document.forms[0].submit();</script>\n"
        "</body></html>\n"
    )


# --- postLink -----------------------------------------------------------------------


def parse_postlink(body: bytes | str | Mapping[str, Any]) -> PostLink:
    """A postLink body (the raw bytes your handler received, or its decoded JSON)."""
    if isinstance(body, Mapping):
        data: Any = dict(body)
    else:
        try:
            data = json.loads(body, parse_float=Decimal)
        except ValueError as exc:
            raise ProtocolError(f"postLink body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ProtocolError("postLink body is not a JSON object")
    try:
        return PostLink.model_validate(data)
    except ValidationError as exc:
        raise ProtocolError(f"postLink body does not fit: {exc}") from None


def check_secret_hash(postlink: PostLink, expected: str) -> bool:
    """True when the postLink carries the ``secret_hash`` your token was issued with.

    Compared in constant time. An empty ``expected`` never matches.
    """
    if not expected:
        return False
    return hmac.compare_digest(postlink.secret_hash.encode("utf-8"), expected.encode("utf-8"))


class InvalidSignature(EpayError):
    """A signed postLink whose signature, timestamp or headers do not check out."""

    default_ru = "Подпись уведомления неверна"


def verify_postlink_signature(body: bytes | str, headers: Mapping[str, str], secret: str) -> None:
    """Check a signed postLink's Standard Webhooks headers (``webhook-id``,
    ``webhook-timestamp``, ``webhook-signature``) against ``secret`` (``whsec_…``, from
    ``tolem merchant signing``). Raises :class:`InvalidSignature`; returns None if good.

    The timestamp must be within five minutes of now, so a captured postLink cannot be
    replayed later.
    """
    from standardwebhooks import Webhook
    from standardwebhooks.webhooks import WebhookVerificationError

    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        Webhook(secret).verify(body, lowered)
    except WebhookVerificationError as exc:
        raise InvalidSignature(f"postLink signature: {exc}") from None
    except Exception as exc:  # a malformed secret
        raise InvalidSignature(f"postLink signature: {type(exc).__name__}: {exc}") from None
