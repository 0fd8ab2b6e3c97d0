"""Typed requests and answers of the ePay protocol (EPAY.md), as pydantic models.

Answers are read leniently, as the live service varies: numbers may come as strings
(``expires_in``, ``reasonCode``), field names in more than one spelling (``invoiceID``,
``invoiceId``), empty strings where a number is missing, and fields this SDK does not
know are kept (``model_extra``). Amounts are :class:`~decimal.Decimal`, never float.
Requests serialise to the exact names ePay documents.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated, Any

from pydantic import AliasChoices, BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr

__all__ = [
    "Card",
    "CardDataError",
    "ConfirmResult",
    "OperationResult",
    "Payment",
    "PaymentRequest",
    "PostLink",
    "SavedCard",
    "Secure3D",
    "StatusResult",
    "Token",
    "Transaction",
]


def _number_or_zero(value: Any) -> Any:
    """``""`` and None, as the live service sends for a missing number, become 0."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return 0
    return value


def _text(value: Any) -> Any:
    """None becomes ""; a number where text is expected is kept as its text."""
    if value is None:
        return ""
    if isinstance(value, int | Decimal) and not isinstance(value, bool):
        return str(value)
    return value


def _flag(value: Any) -> Any:
    if value is None or value == "":
        return False
    return value


Int = Annotated[int, BeforeValidator(_number_or_zero)]
Money = Annotated[Decimal, BeforeValidator(_number_or_zero)]
Text = Annotated[str, BeforeValidator(_text)]
Flag = Annotated[bool, BeforeValidator(_flag)]


def _alias(*names: str) -> Any:
    """A field read under any of ``names`` and written under the first."""
    return Field(default="", validation_alias=AliasChoices(*names), serialization_alias=names[0])


class _Answer(BaseModel):
    """An answer: ``model_dump(by_alias=True)`` gives ePay's field names back."""

    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)


class Token(_Answer):
    """``POST /oauth2/token``: ``expires_in`` may be a string (live) or a number (doc)."""

    access_token: str = Field(repr=False)
    expires_in: Int = 0
    refresh_token: Text = Field(default="", repr=False)
    scope: Text = ""
    token_type: Text = "Bearer"  # noqa: S105 (a token type, not a secret)

    def as_auth(self) -> dict[str, str]:
        """The token object as the hosted page's ``auth`` wants it (strings, as sent)."""
        return {
            "access_token": self.access_token,
            "expires_in": str(self.expires_in),
            "refresh_token": self.refresh_token,
            "scope": self.scope,
            "token_type": self.token_type,
        }


class Secure3D(_Answer):
    """The issuer's challenge: post ``PaReq``, ``MD`` and your TermUrl to ``action``."""

    pa_req: str = Field(
        validation_alias=AliasChoices("paReq", "PaReq", "pareq"), serialization_alias="paReq"
    )
    md: str = Field(validation_alias=AliasChoices("md", "MD"), serialization_alias="md")
    action: str


class Payment(_Answer):
    """A payment's answer (cryptopay, saved-card payment): approved, or waiting for 3DS.

    ``secure3d`` set means the payment is not decided yet: send the cardholder to the
    ACS (see :func:`secure3d_form`) and call ``confirm``. A decline is not a Payment:
    the client raises a :class:`PaymentDeclined` subclass.
    """

    id: Text = ""
    amount: Money = Decimal(0)
    amount_bonus: Money = Field(default=Decimal(0), alias="amountBonus")
    currency: Text = ""
    invoice_id: Text = _alias("invoiceID", "invoiceId", "InvoiceID")
    invoice_id_alt: Text = _alias("invoiceIdAlt", "invoiceIDAlt")
    account_id: Text = _alias("accountID", "accountId")
    phone: Text = ""
    email: Text = ""
    description: Text = ""
    reference: Text = ""
    int_reference: Text = Field(default="", alias="intReference")
    secure3d: Secure3D | None = Field(
        default=None,
        validation_alias=AliasChoices("secure3D", "secure3d"),
        serialization_alias="secure3D",
    )
    card_id: Text = _alias("cardID", "cardId")
    language: Text = ""
    fee: Money = Decimal(0)
    code: Int = 0
    status: Text = ""
    approval_code: Text = Field(default="", alias="approvalCode")
    card_mask: Text = Field(default="", alias="cardMask")
    card_type: Text = Field(default="", alias="cardType")
    issuer: Text = ""

    # The token of the order, kept by the client that made the payment, so that
    # confirm() uses it as ePay asks; not part of the answer, never dumped.
    _order_token: Token | None = PrivateAttr(default=None)

    @property
    def needs_3ds(self) -> bool:
        return self.secure3d is not None

    @property
    def order_token(self) -> Token | None:
        """The token this payment was made with (None if it came from elsewhere)."""
        return self._order_token


class ConfirmResult(_Answer):
    """``POST /payment/confirm``: the outcome and the page to send the cardholder to."""

    code: Int = 0
    message: Text = ""
    id: Text = ""
    invoice_id: Text = _alias("invoiceID", "invoiceId")
    status: Text = ""
    reference: Text = ""
    approval_code: Text = Field(default="", alias="approvalCode")
    card_mask: Text = Field(default="", alias="cardMask")
    card_id: Text = _alias("cardID", "cardId")
    amount: Money = Decimal(0)
    currency: Text = ""
    secure: Flag = False
    redirect_url: Text = Field(default="", alias="redirectUrl")


class Transaction(_Answer):
    """The status API's transaction (``GET /check-status/payment/transaction/{invoiceId}``)."""

    id: Text = ""
    created_date: Text = Field(default="", alias="createdDate")
    invoice_id: Text = _alias("invoiceID", "invoiceId")
    amount: Money = Decimal(0)
    amount_bonus: Money = Field(default=Decimal(0), alias="amountBonus")
    payout_amount: Money = Field(default=Decimal(0), alias="payoutAmount")
    org_amount: Money = Field(default=Decimal(0), alias="orgAmount")
    currency: Text = ""
    terminal: Text = _alias("terminal", "terminalID")
    approval_code: Text = Field(default="", alias="approvalCode")
    data: Text = ""
    account_id: Text = _alias("accountID", "accountId")
    description: Text = ""
    language: Text = ""
    card_mask: Text = Field(default="", alias="cardMask")
    card_type: Text = Field(default="", alias="cardType")
    issuer: Text = ""
    card_id: Text = _alias("cardID", "cardId")
    reference: Text = ""
    reason: Text = ""
    reason_code: Int = Field(default=0, alias="reasonCode")
    int_reference: Text = Field(default="", alias="intReference")
    secure: Flag = False
    secure_details: Text = Field(default="", alias="secureDetails")
    status_id: Text = Field(default="", alias="statusID")
    status_name: Text = Field(default="", alias="statusName")
    name: Text = ""
    email: Text = ""
    phone: Text = ""
    ip: Text = ""

    @property
    def status(self) -> str:
        """NEW, AUTH, CHARGE, CANCEL, REFUND, FAILED, 3D, … (EPAY.md section 11)."""
        return self.status_name or self.status_id


class StatusResult(_Answer):
    result_code: Text = Field(default="", alias="resultCode")
    result_message: Text = Field(default="", alias="resultMessage")
    transaction: Transaction | None = None


class OperationResult(_Answer):
    """charge, cancel or refund. The live service may answer with an empty body."""

    code: Int = 0
    message: Text = ""
    id: Text = ""
    operation_id: Text = Field(default="", alias="operationId")
    status: Text = ""
    amount: Money = Decimal(0)
    amount_charged: Money = Field(default=Decimal(0), alias="amountCharged")
    amount_refunded: Money = Field(default=Decimal(0), alias="amountRefunded")
    reference: Text = ""


class SavedCard(_Answer):
    """One of a customer's saved cards (``GET /cards/{accountId}``)."""

    id: Text = _alias("ID", "id")
    transaction_id: Text = _alias("TransactionId", "transactionId")
    merchant_id: Text = _alias("MerchantID", "merchantId")
    card_hash: Text = _alias("CardHash", "cardHash")
    card_mask: Text = _alias("CardMask", "cardMask")
    payer_name: Text = _alias("PayerName", "payerName")
    reference: Text = _alias("Reference", "reference")
    int_reference: Text = _alias("IntReference", "intReference")
    token: Text = _alias("Token", "token")
    terminal: Text = _alias("Terminal", "terminal")
    created_date: Text = _alias("CreatedDate", "createdDate")
    payment_available: Flag = Field(
        default=False,
        validation_alias=AliasChoices("PaymentAvailable", "paymentAvailable"),
        serialization_alias="PaymentAvailable",
    )
    account_id: Text = _alias("AccountID", "accountId")


class PostLink(_Answer):
    """The notification ePay POSTs to postLink / failurePostLink (EPAY.md section 10)."""

    account_id: Text = _alias("accountId", "accountID")
    amount: Money = Decimal(0)
    approval_code: Text = Field(default="", alias="approvalCode")
    card_id: Text = _alias("cardId", "cardID")
    card_mask: Text = Field(default="", alias="cardMask")
    card_type: Text = Field(default="", alias="cardType")
    code: Text = ""
    currency: Text = ""
    date_time: Text = Field(default="", alias="dateTime")
    description: Text = ""
    email: Text = ""
    id: Text = ""
    invoice_id: Text = _alias("invoiceId", "invoiceID")
    ip: Text = ""
    issuer: Text = ""
    language: Text = ""
    name: Text = ""
    phone: Text = ""
    reason: Text = ""
    reason_code: Int = Field(default=0, alias="reasonCode")
    reference: Text = ""
    secret_hash: Text = Field(default="", repr=False)
    secure: Text = ""
    secure_details: Text = Field(default="", alias="secureDetails")
    terminal: Text = ""

    @property
    def approved(self) -> bool:
        """``code == "ok"``: the payment (or card verification) succeeded."""
        return self.code == "ok" and self.reason_code == 0


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _epay(name: str, **kwargs: Any) -> Any:
    """A request field read under its Python name or ePay's, written under ePay's.

    Not ``alias=``: type checkers without pydantic's plugin would then want ePay's name
    in the constructor.
    """
    python = "".join("_" + c.lower() if c.isupper() else c for c in name)
    return Field(validation_alias=AliasChoices(python, name), serialization_alias=name, **kwargs)


def _no_float(value: Any) -> Any:
    if isinstance(value, float):
        raise ValueError("give the amount as a Decimal, an int or a string, not a float")
    return value


class PaymentRequest(_Request):
    """An order: what the shop sends with the token and the payment.

    ``post_link``, ``failure_post_link`` and ``secret_hash`` go into the invoice's token
    too, so they bind the payment (EPAY.md section 3).
    """

    invoice_id: str = _epay("invoiceId", pattern=r"^[0-9]{6,15}$")
    amount: Annotated[Decimal, BeforeValidator(_no_float)] = Field(ge=0, decimal_places=2)
    currency: str = "KZT"
    description: str = Field(min_length=1, max_length=1000)
    name: str = Field(default="", description="cardholder name; cryptopay requires it")
    account_id: str = _epay("accountId", default="")
    email: str = ""
    phone: str = ""
    invoice_id_alt: str = _epay("invoiceIdAlt", default="", pattern=r"^([0-9]{6,15})?$")
    post_link: str = _epay("postLink", default="")
    failure_post_link: str = _epay("failurePostLink", default="")
    back_link: str = _epay("backLink", default="")
    failure_back_link: str = _epay("failureBackLink", default="")
    secret_hash: str = Field(default="", repr=False)
    card_save: bool = _epay("cardSave", default=False)
    data: str = ""
    language: str = "rus"

    def body(self) -> dict[str, Any]:
        """The payment object's fields under ePay's names; empty optional ones left out."""
        always = {"invoiceId", "amount", "currency", "description", "name", "cardSave"}
        fields = self.model_dump(by_alias=True, exclude={"secret_hash"})
        return {k: v for k, v in fields.items() if k in always or v not in ("", None)}


class CardDataError(ValueError):
    """Card data that cannot make a cryptogram; ``field`` is pan, exp or cvc. The
    message names the rule, never the value (it may be a card number or a CVC)."""

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}")
        self.field = field


_PAN = re.compile(r"[0-9]{12,19}")
_EXP = re.compile(r"(0[1-9]|1[0-2])[0-9]{2}")
_CVC = re.compile(r"[0-9]{3,4}")


class Card:
    """Card data for a cryptogram, kept in memory only.

    Its repr shows only the mask; a refusal (:class:`CardDataError`) never quotes the
    number or the CVC. It has no ``__dict__`` (``vars()``, ``dataclasses.asdict()`` and
    error reporters that walk objects find nothing) and refuses to be pickled.
    """

    __slots__ = ("cvc", "exp", "pan")

    pan: str
    exp: str  # MMYY, as the cryptogram's expDate wants it
    cvc: str

    def __init__(self, pan: str, exp: str, cvc: str) -> None:
        for name, value, pattern, rule in (
            ("pan", pan, _PAN, "12 to 19 digits"),
            ("exp", exp, _EXP, "MMYY, a month 01-12"),
            ("cvc", cvc, _CVC, "3 or 4 digits"),
        ):
            if not isinstance(value, str) or not pattern.fullmatch(value):
                raise CardDataError(name, rule)
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Card is immutable")

    def __reduce__(self) -> Any:
        raise TypeError("Card holds card data and cannot be pickled")

    @classmethod
    def parse(cls, pan: str, exp: str, cvc: str) -> Card:
        """Take ``01/25``, ``0125`` or ``01/2025`` for the expiry and spaces in the PAN."""
        digits = "".join(exp.strip().split("/"))
        if "/" in exp and len(digits) == 6:  # MM/YYYY
            digits = digits[:2] + digits[4:]
        return cls(pan="".join(pan.split()), exp=digits, cvc=cvc.strip())

    @property
    def mask(self) -> str:
        return f"{self.pan[:6]}...{self.pan[-4:]}"

    def __repr__(self) -> str:
        return f"Card(mask={self.mask!r})"

    __str__ = __repr__
