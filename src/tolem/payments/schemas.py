"""Wire models of the payment endpoints: ePay's field names live here and nowhere else."""

from __future__ import annotations

import json
from dataclasses import replace
from decimal import Decimal
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator

from tolem import fields
from tolem.errors import FORMAT_ERROR
from tolem.payments.service import PaymentOrder

_TEXT_LIMITS = {
    "name": 200,
    "description": 1000,
    "account_id": 100,
    "email": 200,
    "phone": 50,
    "invoice_id_alt": 15,
    "payment_type": 32,
    "terminal_id": 36,
    "data": 4000,
}


class OrderBody(BaseModel):
    """The order fields cryptopay and a saved-card payment share (EPAY.md sections 5, 7).

    The shop's free text (name, description, accountId, email, phone, data) is refused
    if it holds a card number (:func:`tolem.fields.free_text`); invoiceId and
    invoiceIdAlt are order numbers, 6 to 15 digits, and are not looked at that way.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    amount: Decimal = Field(description="Amount, a JSON number or numeric string.")
    currency: str = Field(description="ISO 4217 letter code, e.g. KZT.")
    name: str = Field(description="Cardholder name.")
    invoice_id: str = Field(
        validation_alias=AliasChoices("invoiceId", "invoiceID", "InvoiceID", "InvoiceId"),
        description="Order number, 6 to 15 digits; its last 6 digits are unique per terminal.",
    )
    invoice_id_alt: str = Field(
        "", validation_alias=AliasChoices("invoiceIdAlt", "invoiceIDAlt", "invoiceIdalt")
    )
    description: str = Field(description="Goods or services paid for.")
    account_id: str = Field("", validation_alias=AliasChoices("accountId", "accountID"))
    email: str = ""
    phone: str = ""
    post_link: str = Field(
        "",
        validation_alias=AliasChoices("postLink", "postlink"),
        description="Where the result is posted; defaults to the token's postLink.",
    )
    failure_post_link: str = Field(
        "", validation_alias=AliasChoices("failurePostLink", "failurepostlink")
    )
    card_save: bool = Field(False, validation_alias=AliasChoices("cardSave", "cardsave"))
    data: str = Field("", description="Free text (often JSON) echoed in reports.")
    language: str = Field("rus", description="rus, kaz or eng (any case, RU/KZ/EN too).")
    terminal_id: str = Field("", validation_alias=AliasChoices("terminalId", "terminalID"))
    payment_type: str = Field("", validation_alias=AliasChoices("paymentType", "paymenttype"))

    def order(self) -> PaymentOrder:
        """The domain's view of this body (the cryptogram is decrypted separately)."""
        return PaymentOrder(
            amount=self.amount,
            currency=self.currency,
            name=self.name,
            invoice_id=self.invoice_id,
            description=self.description,
            invoice_id_alt=self.invoice_id_alt,
            account_id=self.account_id,
            email=self.email,
            phone=self.phone,
            post_link=self.post_link,
            failure_post_link=self.failure_post_link,
            card_save=self.card_save,
            data=self.data,
            language=self.language,
            terminal_id=self.terminal_id,
            payment_type=self.payment_type,
        )

    @field_validator("amount", mode="before")
    @classmethod
    def _amount(cls, value: Any) -> Decimal:
        return fields.amount(value)

    @field_validator("currency", mode="before")
    @classmethod
    def _currency(cls, value: Any) -> str:
        return fields.currency(value)

    @field_validator("invoice_id", mode="before")
    @classmethod
    def _invoice(cls, value: Any) -> str:
        return fields.invoice(value)

    @field_validator("invoice_id_alt", mode="before")
    @classmethod
    def _invoice_alt(cls, value: Any) -> str:
        if value in (None, ""):
            return ""
        return fields.invoice(value, "invoiceIdAlt")

    @field_validator("name", "description", mode="before")
    @classmethod
    def _required_text(cls, value: Any, info: Any) -> str:
        return fields.free_text(
            value, info.field_name, max_length=_TEXT_LIMITS[info.field_name], required=True
        )

    @field_validator("data", mode="before")
    @classmethod
    def _data(cls, value: Any) -> str:
        if isinstance(value, dict | list):
            value = json.dumps(value, ensure_ascii=False, default=str)
        return fields.free_text(value, "data", max_length=_TEXT_LIMITS["data"])

    @field_validator("account_id", "email", "phone", mode="before")
    @classmethod
    def _optional_text(cls, value: Any, info: Any) -> str:
        return fields.free_text(value, info.field_name, max_length=_TEXT_LIMITS[info.field_name])

    @field_validator("terminal_id", "payment_type", mode="before")
    @classmethod
    def _word(cls, value: Any, info: Any) -> str:
        return fields.text(value, info.field_name, max_length=_TEXT_LIMITS[info.field_name])

    @field_validator("post_link", "failure_post_link", mode="before")
    @classmethod
    def _link(cls, value: Any, info: Any) -> str:
        return fields.link(value, info.field_name)

    @field_validator("card_save", mode="before")
    @classmethod
    def _bool(cls, value: Any) -> bool:
        return fields.boolean(value, "cardSave")

    @field_validator("language", mode="before")
    @classmethod
    def _language(cls, value: Any) -> str:
        return fields.language(value)


class CryptopayBody(OrderBody):
    """``POST /payment/cryptopay`` (EPAY.md section 5)."""

    cryptogram: str = Field(
        validation_alias=AliasChoices("cryptogram", "\u0441ryptogram"),
        description="Card data encrypted with /public.rsa (RSA PKCS#1 v1.5, base64). "
        "The key may also be spelled with a Cyrillic es (U+0441).",
    )

    @field_validator("cryptogram", mode="before")
    @classmethod
    def _cryptogram(cls, value: Any) -> str:
        return fields.text(value, "cryptogram", max_length=8192, required=True)


class SavedCardBody(OrderBody):
    """``POST /payments/cards/auth`` with ``paymentType: "cardId"`` (EPAY.md section 7)."""

    card_id: str = Field(
        validation_alias=AliasChoices("cardId", "cardID", "CardId"),
        description='The saved card: {"id": "<cardID>"} (or the id as a string).',
    )
    back_link: str = Field("", validation_alias=AliasChoices("backLink", "backlink"))
    failure_back_link: str = Field(
        "", validation_alias=AliasChoices("failureBackLink", "failurebacklink")
    )

    @field_validator("card_id", mode="before")
    @classmethod
    def _card_id(cls, value: Any) -> str:
        if isinstance(value, dict):
            value = value.get("id", value.get("ID"))
        return fields.text(value, "cardId", max_length=36, required=True).strip()

    @field_validator("back_link", "failure_back_link", mode="before")
    @classmethod
    def _back(cls, value: Any, info: Any) -> str:
        return fields.link(value, info.field_name)

    def order(self) -> PaymentOrder:
        return replace(
            super().order(),
            card_id=self.card_id,
            back_link=self.back_link,
            failure_back_link=self.failure_back_link,
        )


def _wire_name(name: str, alias: object) -> str:
    return str(alias.choices[0]) if isinstance(alias, AliasChoices) else name


_WIRE_NAMES: dict[str, str] = {
    name: _wire_name(name, info.validation_alias)
    for model in (CryptopayBody, SavedCardBody)
    for name, info in model.model_fields.items()
}


def parse_cryptopay(data: dict[str, Any]) -> CryptopayBody:
    """Validate a body, or raise :class:`fields.FieldError` for its first problem."""
    try:
        return CryptopayBody.model_validate(data)
    except ValidationError as exc:
        raise _field_error(exc) from None


def parse_saved_card(data: dict[str, Any]) -> SavedCardBody:
    try:
        return SavedCardBody.model_validate(data)
    except ValidationError as exc:
        raise _field_error(exc) from None


def _field_error(exc: ValidationError) -> fields.FieldError:
    first = exc.errors()[0]
    loc = first.get("loc") or ("body",)
    wire_name = _WIRE_NAMES.get(str(loc[0]), str(loc[0]))
    original = (first.get("ctx") or {}).get("error")
    if isinstance(original, fields.FieldError):
        return fields.FieldError(
            _WIRE_NAMES.get(original.field, original.field),
            str(original).split(": ", 1)[-1],
            code=original.code,
        )
    if first.get("type") == "missing":
        return fields.FieldError(wire_name, "is required", code=FORMAT_ERROR)
    return fields.FieldError(wire_name, str(first.get("msg", "invalid")), code=FORMAT_ERROR)
