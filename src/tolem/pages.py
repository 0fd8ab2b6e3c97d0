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
    loader=PackageLoader("tolem", "templates"),
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
        "pay_title": "Оплата заказа",
        "verify_title": "Привязка карты",
        "verify_note": "Деньги не списываются: карта только проверяется и сохраняется.",
        "description": "Назначение",
        "card_number": "Номер карты",
        "expiry": "Срок действия",
        "cvc": "CVC/CVV",
        "cardholder": "Имя владельца карты",
        "email_opt": "Email (необязательно)",
        "phone_opt": "Телефон (необязательно)",
        "pay_button": "Оплатить {amount}",
        "verify_button": "Проверить карту",
        "wait_button": "Подождите…",
        "msg_pan": "Проверьте номер карты",
        "msg_exp": "Укажите срок в формате ММ/ГГ",
        "msg_cvc": "Проверьте CVC",
        "msg_name": "Укажите имя владельца карты",
        "msg_email": "Проверьте email",
        "msg_phone": "Проверьте номер телефона",
        "secure_note": "Данные карты получает только платёжный шлюз, магазин их не видит.",
        "sandbox_note": "Песочница tolem: платите тестовыми картами (tolem cards).",
        "expired_title": "Сессия истекла",
        "expired_text": "Ссылка на оплату устарела. Вернитесь в магазин и начните оплату заново.",
        "invalid_title": "Некорректный запрос на оплату",
        "invalid_text": "Магазин передал данные платежа, которые нельзя использовать:",
        "unsupported_title": "Пока не поддерживается",
        "unsupported_text": "Переводы (P2P, AFT, OCT) в tolem пока не поддерживаются.",
        "back_to_shop": "Вернуться в магазин",
        "close": "Закрыть",
        "verified_title": "Карта проверена и сохранена",
        "pending_title": "Платёж обрабатывается",
        "pending_text": "Страница обновится сама.",
        "three_ds_title": "Нужно подтверждение 3-D Secure",
        "not_found_title": "Платёж не найден",
        "try_again": "Исправьте данные карты и попробуйте снова.",
        "cab_title": "Кабинет магазина",
        "cab_login_title": "Вход в кабинет",
        "cab_email": "Email",
        "cab_password": "Пароль",
        "cab_login": "Войти",
        "cab_wrong": "Неверный email или пароль",
        "cab_locked": "Учётная запись заблокирована после трёх неверных паролей; "
        "попробуйте снова после {time} UTC",
        "cab_logout": "Выйти",
        "cab_transactions": "Транзакции",
        "cab_date": "Дата (UTC)",
        "cab_invoice": "Номер заказа",
        "cab_status": "Статус",
        "cab_all_statuses": "Все статусы",
        "cab_filter": "Найти",
        "cab_reset": "Сбросить",
        "cab_older": "Более ранние →",
        "cab_newest": "← К последним",
        "cab_empty": "Транзакций нет.",
        "cab_forbidden_title": "Запрос отклонён",
        "cab_forbidden_text": "Страница устарела или запрос пришёл с другого сайта. "
        "Откройте страницу заново.",
        "cab_back": "Вернуться в кабинет",
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
        "pay_title": "Тапсырысты төлеу",
        "verify_title": "Картаны тіркеу",
        "verify_note": "Ақша алынбайды: карта тек тексеріліп, сақталады.",
        "description": "Төлем мақсаты",
        "card_number": "Карта нөмірі",
        "expiry": "Жарамдылық мерзімі",
        "cvc": "CVC/CVV",
        "cardholder": "Карта иесінің аты",
        "email_opt": "Email (міндетті емес)",
        "phone_opt": "Телефон (міндетті емес)",
        "pay_button": "Төлеу {amount}",
        "verify_button": "Картаны тексеру",
        "wait_button": "Күте тұрыңыз…",
        "msg_pan": "Карта нөмірін тексеріңіз",
        "msg_exp": "Мерзімді АА/ЖЖ түрінде жазыңыз",
        "msg_cvc": "CVC кодын тексеріңіз",
        "msg_name": "Карта иесінің атын жазыңыз",
        "msg_email": "Email-ді тексеріңіз",
        "msg_phone": "Телефон нөмірін тексеріңіз",
        "secure_note": "Карта деректерін тек төлем шлюзі алады, дүкен оларды көрмейді.",
        "sandbox_note": "tolem құмсалғышы: тест карталарымен төлеңіз (tolem cards).",
        "expired_title": "Сессия уақыты бітті",
        "expired_text": "Төлем сілтемесінің мерзімі өтті. Дүкенге оралып, төлемді қайта бастаңыз.",
        "invalid_title": "Төлем сұрауы қате",
        "invalid_text": "Дүкен пайдалануға болмайтын төлем деректерін жіберді:",
        "unsupported_title": "Әзірге қолдау жоқ",
        "unsupported_text": "tolem әзірге аударымдарды (P2P, AFT, OCT) қолдамайды.",
        "back_to_shop": "Дүкенге оралу",
        "close": "Жабу",
        "verified_title": "Карта тексеріліп, сақталды",
        "pending_title": "Төлем өңделуде",
        "pending_text": "Бет өздігінен жаңарады.",
        "three_ds_title": "3-D Secure растауы қажет",
        "not_found_title": "Төлем табылмады",
        "try_again": "Карта деректерін түзетіп, қайталап көріңіз.",
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
        "pay_title": "Order payment",
        "verify_title": "Card verification",
        "verify_note": "No money is taken: the card is only checked and saved.",
        "description": "Description",
        "card_number": "Card number",
        "expiry": "Expiry date",
        "cvc": "CVC/CVV",
        "cardholder": "Cardholder name",
        "email_opt": "Email (optional)",
        "phone_opt": "Phone (optional)",
        "pay_button": "Pay {amount}",
        "verify_button": "Verify card",
        "wait_button": "Please wait…",
        "msg_pan": "Check the card number",
        "msg_exp": "Enter the expiry as MM/YY",
        "msg_cvc": "Check the CVC",
        "msg_name": "Enter the cardholder name",
        "msg_email": "Check the email address",
        "msg_phone": "Check the phone number",
        "secure_note": "Only the payment gateway sees your card details, never the shop.",
        "sandbox_note": "tolem sandbox: pay with the test cards (tolem cards).",
        "expired_title": "Session expired",
        "expired_text": "This payment link has expired. Go back to the shop and start again.",
        "invalid_title": "Invalid payment request",
        "invalid_text": "The shop sent payment details that cannot be used:",
        "unsupported_title": "Not supported yet",
        "unsupported_text": "Transfers (P2P, AFT, OCT) are not supported by tolem yet.",
        "back_to_shop": "Return to the shop",
        "close": "Close",
        "verified_title": "Card verified and saved",
        "pending_title": "Payment in progress",
        "pending_text": "This page refreshes by itself.",
        "three_ds_title": "3-D Secure confirmation needed",
        "not_found_title": "Payment not found",
        "try_again": "Correct the card details and try again.",
        "cab_title": "Merchant cabinet",
        "cab_login_title": "Log in to the cabinet",
        "cab_email": "Email",
        "cab_password": "Password",
        "cab_login": "Log in",
        "cab_wrong": "Wrong email or password",
        "cab_locked": "Account locked after three wrong passwords; try again after {time} UTC",
        "cab_logout": "Log out",
        "cab_transactions": "Transactions",
        "cab_date": "Date (UTC)",
        "cab_invoice": "Invoice",
        "cab_status": "Status",
        "cab_all_statuses": "All statuses",
        "cab_filter": "Filter",
        "cab_reset": "Reset",
        "cab_older": "Older →",
        "cab_newest": "← Newest",
        "cab_empty": "No transactions.",
        "cab_forbidden_title": "Request refused",
        "cab_forbidden_text": "The page has expired or the request came from another site. "
        "Open the page again.",
        "cab_back": "Back to the cabinet",
    },
}

# The cabinet speaks Russian and English for now; Kazakh pages show its Russian texts.
TEXT["kk"] = {
    **{key: text for key, text in TEXT["ru"].items() if key.startswith("cab_")},
    **TEXT["kk"],
}


def lang_of(language: str | None) -> str:
    """Page language from an ePay language in any spelling; Russian by default."""
    from tolem.fields import language as normalise

    return LANGS[normalise(language)]


def amount_text(amount: str | Decimal) -> str:
    value = Decimal(str(amount))
    return f"{value:,.2f}".replace(",", "\u00a0")


def render(
    template: str,
    *,
    lang: str = "ru",
    status_code: int = 200,
    form_action: str = "http: https:",
    frame_ancestors: str = "'self'",
    **context: Any,
) -> HTMLResponse:
    """A page under a Content-Security-Policy that runs only this response's nonce.

    ``form_action`` lists where its forms may post (and redirect after posting);
    ``frame_ancestors`` who may frame it (the payment widget lives in shops' iframes).
    """
    nonce = secrets.token_urlsafe(16)
    html = _env.get_template(template).render(
        t=TEXT.get(lang, TEXT["ru"]), lang=lang, nonce=nonce, amount_text=amount_text, **context
    )
    csp = (
        "default-src 'none'; "
        f"script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; img-src 'self' data:; "
        f"form-action {form_action}; base-uri 'none'; frame-ancestors {frame_ancestors}"
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
