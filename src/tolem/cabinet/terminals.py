"""The cabinet's Terminals page: each terminal's settings, and the merchant's credentials.

    GET  /cabinet/terminals                  the terminals (settings forms) and ClientID
    POST /cabinet/terminals/{id}             save one terminal's settings
    POST /cabinet/terminals/secret           "Issue a new ClientSecret?": the confirmation
    POST /cabinet/terminals/secret/confirm   rotate it; the new secret is shown once

Settings are read by every token and payment as they come (nothing caches them), so a
saved change applies to the next one. The host list is enforced in production mode only
(tolem.oauth.service.issue and tolem.payments.service.claim call
tolem.merchants.service.link_problem); sandbox mode accepts any host.

Rotating the ClientSecret takes two POSTs, as the transactions' operations do: the
confirmation value is an HMAC, keyed by the session's CSRF token, over the merchant and
the digest of the secret now stored; the rotation is a conditional update on that
digest, so one confirmation rotates at most once. The new secret is stored only as
salt and digest and is shown once, on the confirm POST's answer (no-store); the log
names who rotated it and for which merchant, never the secret.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from tolem.cabinet.common import (
    Who,
    flash,
    flash_url,
    mac,
    not_found,
    page,
    posted,
    redirect,
    same,
    signed_in,
    texts,
)
from tolem.merchants import service as merchants
from tolem.merchants.models import Merchant, Terminal
from tolem.pages import add_texts
from tolem.processor.base import Secure3DPolicy
from tolem.runtime import Runtime, runtime

log = logging.getLogger("tolem.cabinet")

router = APIRouter(include_in_schema=False)

PATH = "/cabinet/terminals"
#: read_form keeps 2048 characters of a field: a longer host list is refused, not cut.
MAX_HOSTS_TEXT = 2000
FLOWS = {"two": True, "one": False}


@dataclass(frozen=True)
class _Form:
    """One terminal's settings form: as stored, or as posted with the error found."""

    terminal: Terminal
    two_step: bool
    secure3d: str
    currencies: tuple[str, ...]
    hosts: str
    error: str = ""

    @property
    def options(self) -> tuple[str, ...]:
        """The currencies offered: the fixed list and any other the terminal holds."""
        held = self.terminal.currencies.split()
        return merchants.CURRENCIES + tuple(c for c in held if c not in merchants.CURRENCIES)

    @classmethod
    def stored(cls, terminal: Terminal) -> _Form:
        return cls(
            terminal,
            terminal.two_step,
            terminal.secure3d,
            tuple(terminal.currencies.split()),
            "\n".join(terminal.allowed_hosts.split()),
        )


@dataclass(frozen=True)
class _Merchant:
    client_id: str
    secret_digest: str
    terminals: list[Terminal]

    @property
    def is_sandbox(self) -> bool:
        """ePay's public test merchant: its secret is published, so it is not rotated."""
        return self.client_id == merchants.SANDBOX_CLIENT_ID


def _load(rt: Runtime, merchant_id: str) -> _Merchant:
    with rt.db.read() as session:
        merchant = session.get(Merchant, merchant_id)
        assert merchant is not None  # a live session's user has a merchant
        return _Merchant(
            merchant.client_id,
            merchant.secret_digest,
            merchants.terminals_of(session, merchant_id),
        )


def _page(
    rt: Runtime,
    request: Request,
    who: Who,
    mine: _Merchant,
    *,
    status_code: int = 200,
    failed: _Form | None = None,
    outcome: str = "",
    message: str = "",
) -> Response:
    forms = [
        failed if failed is not None and failed.terminal.id == t.id else _Form.stored(t)
        for t in mine.terminals
    ]
    return page(
        rt,
        request,
        "cabinet_terminals.html",
        status_code=status_code,
        section="terminals",
        user=who,
        csrf=who.csrf,
        client_id=mine.client_id,
        forms=forms,
        policies=Secure3DPolicy.ALL,
        max_hosts_text=MAX_HOSTS_TEXT,
        outcome=outcome,
        message=message,
    )


@router.get(PATH)
async def terminals(request: Request, rt: Annotated[Runtime, Depends(runtime)]) -> Response:
    who = await signed_in(rt, request)
    if isinstance(who, Response):
        return who
    mine = await run_in_threadpool(_load, rt, who.merchant_id)
    outcome, message = flash(request, who)
    return _page(rt, request, who, mine, outcome=outcome, message=message)


# --- the ClientSecret ----------------------------------------------------------------
# Registered before /cabinet/terminals/{terminal_id}: "secret" is not a terminal.


def _confirmation(who: Who, mine: _Merchant) -> str:
    return mac(who, "rotate-secret", who.merchant_id, mine.secret_digest)


@router.post(f"{PATH}/secret")
async def ask_rotation(request: Request, rt: Annotated[Runtime, Depends(runtime)]) -> Response:
    checked = await posted(rt, request)
    if isinstance(checked, Response):
        return checked
    who, _form = checked
    mine = await run_in_threadpool(_load, rt, who.merchant_id)
    if mine.is_sandbox:
        return redirect(flash_url(who, PATH, "error", texts(request)["cab_secret_sandbox"]))
    return page(
        rt,
        request,
        "cabinet_secret.html",
        section="terminals",
        user=who,
        csrf=who.csrf,
        client_id=mine.client_id,
        confirmation=_confirmation(who, mine),
        secret="",
    )


def _rotate(rt: Runtime, who: Who, old_digest: str) -> str | None:
    with rt.db.write() as session:
        secret = merchants.rotate_secret(session, who.merchant_id, old_digest)
    if secret is not None:
        log.info("cabinet: ClientSecret of merchant %s rotated by %s", who.merchant_id, who.email)
    return secret


@router.post(f"{PATH}/secret/confirm")
async def rotate(request: Request, rt: Annotated[Runtime, Depends(runtime)]) -> Response:
    checked = await posted(rt, request)
    if isinstance(checked, Response):
        return checked
    who, form = checked
    t = texts(request)
    mine = await run_in_threadpool(_load, rt, who.merchant_id)
    if mine.is_sandbox:
        return redirect(flash_url(who, PATH, "error", t["cab_secret_sandbox"]))
    secret = None
    if same(form.get("confirmation", ""), _confirmation(who, mine)):
        secret = await run_in_threadpool(_rotate, rt, who, mine.secret_digest)
    if secret is None:  # a forged, stale or already used confirmation
        return _page(
            rt, request, who, mine, status_code=400, outcome="error", message=t["cab_secret_stale"]
        )
    return page(
        rt,
        request,
        "cabinet_secret.html",
        section="terminals",
        user=who,
        csrf=who.csrf,
        client_id=mine.client_id,
        confirmation="",
        secret=secret,
    )


# --- one terminal's settings ---------------------------------------------------------


def _read(
    terminal: Terminal, form: dict[str, str], t: dict[str, str]
) -> tuple[_Form, merchants.TerminalSettings | None]:
    """The posted form and, if it is valid, the settings to save (else the form
    carries the error to show)."""
    flow = form.get("flow", "")
    secure3d = form.get("secure3d", "")
    hosts = form.get("hosts", "")
    offered = _Form.stored(terminal).options
    chosen = tuple(c for c in offered if f"currency_{c}" in form)
    shown = _Form(terminal, FLOWS.get(flow, terminal.two_step), secure3d, chosen, hosts)

    def refuse(message: str) -> tuple[_Form, None]:
        return _Form(terminal, shown.two_step, secure3d, chosen, hosts, message), None

    known = {"csrf", "flow", "secure3d", "hosts"} | {f"currency_{c}" for c in offered}
    unknown = sorted(set(form) - known)
    if unknown:
        return refuse(t["cab_term_unknown_field"].format(field=unknown[0][:40]))
    if flow not in FLOWS:
        return refuse(t["cab_term_bad_flow"])
    if secure3d not in Secure3DPolicy.ALL:
        return refuse(t["cab_term_bad_secure3d"])
    if not chosen:
        return refuse(t["cab_term_no_currency"])
    if len(hosts) > MAX_HOSTS_TEXT:
        return refuse(t["cab_term_hosts_too_long"].format(limit=MAX_HOSTS_TEXT))
    try:
        allowed = merchants.parse_hosts(hosts)
    except merchants.HostError as exc:
        reason = t[f"cab_host_{exc.code}"].format(limit=merchants.MAX_HOSTS)
        return refuse(t["cab_term_bad_host"].format(entry=exc.entry[:100], reason=reason))
    return shown, merchants.TerminalSettings(FLOWS[flow], secure3d, chosen, allowed)


def _save(rt: Runtime, who: Who, terminal_id: str, wanted: merchants.TerminalSettings) -> bool:
    with rt.db.write() as session:
        saved = merchants.update_terminal(session, who.merchant_id, terminal_id, wanted)
    if saved is None:
        return False
    log.info(
        "cabinet: terminal %s set by %s: two_step=%s secure3d=%s currencies=%s hosts=%s",
        terminal_id,
        who.email,
        wanted.two_step,
        wanted.secure3d,
        " ".join(wanted.currencies),
        " ".join(wanted.allowed_hosts) or "(any)",
    )
    return True


@router.post(f"{PATH}/{{terminal_id}}")
async def save(
    terminal_id: str, request: Request, rt: Annotated[Runtime, Depends(runtime)]
) -> Response:
    checked = await posted(rt, request, max_fields=32)
    if isinstance(checked, Response):
        return checked
    who, form = checked
    t = texts(request)
    mine = await run_in_threadpool(_load, rt, who.merchant_id)
    terminal = next((x for x in mine.terminals if x.id == terminal_id), None)
    if terminal is None:  # not this merchant's: as if it did not exist
        return not_found(rt, request, who)
    shown, wanted = _read(terminal, form, t)
    if wanted is None:
        return _page(
            rt,
            request,
            who,
            mine,
            status_code=400,
            failed=shown,
            outcome="error",
            message=shown.error,
        )
    if not await run_in_threadpool(_save, rt, who, terminal.id, wanted):
        return not_found(rt, request, who)
    message = t["cab_term_saved"].format(name=terminal.name)
    return redirect(flash_url(who, PATH, "ok", message))


add_texts(
    {
        "ru": {
            "cab_terminals": "Терминалы",
            "cab_credentials": "Доступ к API",
            "cab_client_id": "ClientID",
            "cab_secret_note": "ClientSecret не хранится в tolem: его нельзя показать ещё "
            "раз. Если он утерян или мог попасть к чужим, выпустите новый.",
            "cab_secret_new": "Выпустить новый ClientSecret…",
            "cab_secret_question": "Выпустить новый ClientSecret?",
            "cab_secret_warning": "Старый ClientSecret перестанет работать сразу: "
            "магазин не получит токен, пока в его настройках не будет новый.",
            "cab_secret_confirm": "Да, выпустить",
            "cab_secret_issued": "Новый ClientSecret",
            "cab_secret_once": "Он показан один раз и больше нигде не хранится: "
            "скопируйте его сейчас в настройки магазина. Старый уже не работает.",
            "cab_secret_stale": "Подтверждение устарело или уже использовано: "
            "ClientSecret не изменён. Начните заново.",
            "cab_secret_sandbox": "ClientSecret тестового мерчанта ePay опубликован "
            "в документации и не меняется: создайте своего мерчанта.",
            "cab_back_to_terminals": "К терминалам",
            "cab_terminal_id": "TerminalID",
            "cab_term_test": "тестовый",
            "cab_term_live": "боевой",
            "cab_term_flow": "Схема оплаты",
            "cab_term_two_step": "Двухстадийная: авторизация (AUTH), затем списание или отмена",
            "cab_term_one_step": "Одностадийная: списание сразу (CHARGE)",
            "cab_term_secure3d": "3-D Secure",
            "cab_term_3ds_always": "Всегда",
            "cab_term_3ds_card": "Как решит банк карты",
            "cab_term_3ds_never": "Никогда",
            "cab_term_currencies": "Валюты",
            "cab_term_hosts": "Разрешённые хосты для postLink, failurePostLink, "
            "backLink и failureBackLink",
            "cab_term_hosts_hint": "По одному имени хоста в строке, без https:// и пути "
            "(shop.kz). Пусто: любой хост. Проверяется только в боевом режиме (production); "
            "песочница принимает любой хост.",
            "cab_term_save": "Сохранить",
            "cab_term_saved": "Настройки терминала «{name}» сохранены.",
            "cab_term_unknown_field": "Неизвестное поле формы: {field}.",
            "cab_term_bad_flow": "Выберите одностадийную или двухстадийную схему.",
            "cab_term_bad_secure3d": "Выберите, когда спрашивать 3-D Secure.",
            "cab_term_no_currency": "Выберите хотя бы одну валюту.",
            "cab_term_hosts_too_long": "Список хостов длиннее {limit} символов.",
            "cab_term_bad_host": "Разрешённые хосты: «{entry}»: {reason}.",
            "cab_host_scheme": "укажите только имя хоста, без http:// или https://",
            "cab_host_path": "укажите только имя хоста, без пути",
            "cab_host_user": "укажите только имя хоста, без имени пользователя",
            "cab_host_port": "укажите только имя хоста, без порта",
            "cab_host_wildcard": "маски не поддерживаются: перечислите каждый хост",
            "cab_host_invalid": "это не имя хоста",
            "cab_host_too_many": "не больше {limit} хостов",
        },
        "en": {
            "cab_terminals": "Terminals",
            "cab_credentials": "API credentials",
            "cab_client_id": "ClientID",
            "cab_secret_note": "tolem does not keep the ClientSecret, so it cannot be "
            "shown again. If it is lost or may have leaked, issue a new one.",
            "cab_secret_new": "Issue a new ClientSecret…",
            "cab_secret_question": "Issue a new ClientSecret?",
            "cab_secret_warning": "The current ClientSecret stops working at once: the "
            "shop gets no token until its settings hold the new one.",
            "cab_secret_confirm": "Yes, issue it",
            "cab_secret_issued": "New ClientSecret",
            "cab_secret_once": "It is shown this once and kept nowhere: copy it into the "
            "shop's settings now. The old one no longer works.",
            "cab_secret_stale": "The confirmation is out of date or already used: the "
            "ClientSecret is unchanged. Please start again.",
            "cab_secret_sandbox": "ePay's test merchant has a ClientSecret published in "
            "the documentation, which does not change: create a merchant of your own.",
            "cab_back_to_terminals": "Back to terminals",
            "cab_terminal_id": "TerminalID",
            "cab_term_test": "test",
            "cab_term_live": "production",
            "cab_term_flow": "Payment flow",
            "cab_term_two_step": "Two-step: authorize (AUTH), then charge or cancel",
            "cab_term_one_step": "One-step: charge at once (CHARGE)",
            "cab_term_secure3d": "3-D Secure",
            "cab_term_3ds_always": "Always",
            "cab_term_3ds_card": "As the card's issuer decides",
            "cab_term_3ds_never": "Never",
            "cab_term_currencies": "Currencies",
            "cab_term_hosts": "Hosts allowed for postLink, failurePostLink, backLink "
            "and failureBackLink",
            "cab_term_hosts_hint": "One host name a line, without https:// or a path "
            "(shop.kz). Empty: any host. Checked in production mode only; the sandbox "
            "accepts any host.",
            "cab_term_save": "Save",
            "cab_term_saved": "Settings of terminal “{name}” saved.",
            "cab_term_unknown_field": "Unknown form field: {field}.",
            "cab_term_bad_flow": "Choose the one-step or the two-step flow.",
            "cab_term_bad_secure3d": "Choose when to ask for 3-D Secure.",
            "cab_term_no_currency": "Choose at least one currency.",
            "cab_term_hosts_too_long": "The host list is longer than {limit} characters.",
            "cab_term_bad_host": "Allowed hosts: “{entry}”: {reason}.",
            "cab_host_scheme": "write the host name only, without http:// or https://",
            "cab_host_path": "write the host name only, without a path",
            "cab_host_user": "write the host name only, without a user name",
            "cab_host_port": "write the host name only, without a port",
            "cab_host_wildcard": "wildcards are not supported: list each host name",
            "cab_host_invalid": "not a host name",
            "cab_host_too_many": "at most {limit} host names",
        },
    }
)
