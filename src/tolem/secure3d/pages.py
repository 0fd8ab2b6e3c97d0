"""HTML pages: Jinja2 with autoescaping, a strict Content-Security-Policy, three languages.

Every page escapes what it shows (autoescape is on for every template); inline script
and style run only with the per-response nonce.
"""

from __future__ import annotations

import secrets
from decimal import Decimal
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.responses import HTMLResponse

_env = Environment(
    loader=PackageLoader("tolem.secure3d", "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)

LANGS = {"rus": "ru", "kaz": "kk", "eng": "en"}

TEXT: dict[str, dict[str, str]] = {
    "ru": {
        "acs_title": "Подтверждение платежа",
        "merchant": "Магазин",
        "amount": "Сумма",
        "card": "Карта",
        "code": "Одноразовый код из SMS",
        "sandbox_code": "Песочница: код",
        "confirm": "Подтвердить",
        "fail": "Отклонить (проверка ошибки)",
        "wrong_code": "Неверный код. Осталось попыток: {n}",
        "wait": "Дождитесь ответа!",
        "continue": "Продолжить",
        "success_title": "Оплата прошла успешно",
        "error_title": "Оплата не прошла",
        "invoice": "Номер заказа",
        "reference": "Номер операции",
        "reason": "Причина",
        "bad_request": "Некорректный запрос 3-D Secure",
    },
    "kk": {
        "acs_title": "Төлемді растау",
        "merchant": "Дүкен",
        "amount": "Сома",
        "card": "Карта",
        "code": "SMS-тегі бір реттік код",
        "sandbox_code": "Құмсалғыш: код",
        "confirm": "Растау",
        "fail": "Бас тарту (қатені тексеру)",
        "wrong_code": "Код қате. Қалған әрекет саны: {n}",
        "wait": "Жауабын күтіңіз!",
        "continue": "Жалғастыру",
        "success_title": "Төлем сәтті өтті",
        "error_title": "Төлем өтпеді",
        "invoice": "Тапсырыс нөмірі",
        "reference": "Операция нөмірі",
        "reason": "Себебі",
        "bad_request": "3-D Secure сұрауы қате",
    },
    "en": {
        "acs_title": "Confirm your payment",
        "merchant": "Merchant",
        "amount": "Amount",
        "card": "Card",
        "code": "One-time code from the SMS",
        "sandbox_code": "Sandbox: the code is",
        "confirm": "Confirm",
        "fail": "Decline (test a failure)",
        "wrong_code": "Wrong code. Attempts left: {n}",
        "wait": "Wait for an answer!",
        "continue": "Continue",
        "success_title": "Payment successful",
        "error_title": "Payment failed",
        "invoice": "Order number",
        "reference": "Reference",
        "reason": "Reason",
        "bad_request": "Invalid 3-D Secure request",
    },
}


def lang_of(language: str | None) -> str:
    """Page language from an ePay language in any spelling; Russian by default."""
    from tolem.fields import language as normalise

    return LANGS[normalise(language)]


def amount_text(amount: str | Decimal) -> str:
    value = Decimal(str(amount))
    return f"{value:,.2f}".replace(",", "\u00a0")


def render(
    template: str, *, lang: str = "ru", status_code: int = 200, **context: Any
) -> HTMLResponse:
    nonce = secrets.token_urlsafe(16)
    html = _env.get_template(template).render(
        t=TEXT.get(lang, TEXT["ru"]), lang=lang, nonce=nonce, amount_text=amount_text, **context
    )
    csp = (
        "default-src 'none'; "
        f"script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; img-src 'self' data:; "
        "form-action http: https:; base-uri 'none'; frame-ancestors 'self'"
    )
    return HTMLResponse(
        html,
        status_code=status_code,
        headers={
            "Content-Security-Policy": csp,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-store",
        },
    )
