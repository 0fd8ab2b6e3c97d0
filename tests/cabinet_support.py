"""Helpers the cabinet tests share: the CLI against a gateway, fresh users, logging in."""

from __future__ import annotations

import json
import re
import secrets
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.support import (
    CLIENT_ID,
    Gateway,
    cryptogram,
    cryptopay,
    new_invoice,
    payment_body,
    start_gateway,
    token,
)

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def tolem(gw: Gateway, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """The CLI against this gateway's database and data dir."""
    return gw.cli(*args, stdin=stdin)


def new_merchant(gw: Gateway, name: str = "Other shop") -> dict[str, Any]:
    """``tolem merchant create --json``: clientId, clientSecret, terminalId, merchantId."""
    created = tolem(gw, "merchant", "create", "--name", name, "--json")
    assert created.returncode == 0, created.stderr
    creds: dict[str, Any] = json.loads(created.stdout)
    return creds


def new_user(gw: Gateway, client_id: str = CLIENT_ID, password: str = "right-pass-1") -> str:
    """``tolem user create`` with the password on stdin; returns the fresh email."""
    email = f"u{secrets.token_hex(4)}@shop.kz"
    created = tolem(
        gw, "user", "create", "--email", email, "--merchant", client_id, stdin=password + "\n"
    )
    assert created.returncode == 0, created.stdout + created.stderr
    return email


def csrf_of(page: httpx.Response) -> str:
    found = CSRF.search(page.text)
    assert found is not None, page.text
    return found.group(1)


def log_in(client: httpx.Client, email: str, password: str, **headers: str) -> httpx.Response:
    """Open the login form (its double-submit cookie and field) and post it."""
    form = client.get("/cabinet/login")
    assert form.status_code == 200, form.text
    return client.post(
        "/cabinet/login",
        data={"csrf": csrf_of(form), "email": email, "password": password},
        headers=headers,
    )


def pay_as(
    gw: Gateway,
    client: httpx.Client,
    *,
    creds: dict[str, Any] | None = None,
    card: tuple[str, str, str] = ("4405639704015096", "0125", "815"),
    **extra: Any,
) -> tuple[str, httpx.Response]:
    """A payment through the API, by the test merchant or the one ``creds`` names."""
    invoice = new_invoice()
    if creds is None:
        tok = token(client, invoice=invoice)
        body = payment_body(gw, invoice, card=card, **extra)
    else:
        tok = token(
            client,
            invoice=invoice,
            terminal=creds["terminalId"],
            client_id=creds["clientId"],
            client_secret=creds["clientSecret"],
        )
        body = payment_body(gw, invoice, card=card, **extra)
        body["cryptogram"] = cryptogram(gw, *card, terminal=creds["terminalId"])
    return invoice, cryptopay(client, tok["access_token"], body)


#: A gateway whose postLink worker delivers, quickly (to tests.receiver on 127.0.0.1).
DELIVERING = {
    "TOLEM_POSTLINK_WORKER": "true",
    "TOLEM_POSTLINK_RETRY_SCHEDULE": "0.2,0.4,0.6",
    "TOLEM_POSTLINK_TIMEOUT": "2",
    "TOLEM_POSTLINK_POLL_INTERVAL": "0.05",
}
CONFIRM_FORM = re.compile(r'<form [^>]*id="confirm-form">(.*?)</form>', re.S)
HIDDEN = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)">')


@contextmanager
def delivering_gateway(data_dir: Path) -> Iterator[Gateway]:
    """A gateway of its own (SQLite) that sends postLinks."""
    url = f"sqlite:///{data_dir / 'tolem.db'}"
    with start_gateway(data_dir, url, extra_env=DELIVERING) as gw:
        yield gw


def confirm_fields(page: httpx.Response) -> dict[str, str]:
    """The hidden fields of a confirmation page's form."""
    form = CONFIRM_FORM.search(page.text)
    assert form is not None, page.text
    return dict(HIDDEN.findall(form.group(1)))


def ask(
    user: httpx.Client, tx_id: str, kind: str, amount: str | None = None, **headers: str
) -> httpx.Response:
    """The detail page's operation form, posted: the confirmation page (or a refusal)."""
    csrf = csrf_of(user.get(f"/cabinet/transactions/{tx_id}"))
    data = {"csrf": csrf} | ({} if amount is None else {"amount": amount})
    return user.post(f"/cabinet/transactions/{tx_id}/{kind}", data=data, headers=headers)


def operate(
    user: httpx.Client, tx_id: str, kind: str, amount: str | None = None
) -> tuple[httpx.Response, httpx.Response]:
    """Ask and confirm: the confirmation page and the confirm POST's answer."""
    question = ask(user, tx_id, kind, amount)
    assert question.status_code == 200, question.text
    done = user.post(f"/cabinet/transactions/{tx_id}/{kind}/confirm", data=confirm_fields(question))
    return question, done


def api_status(client: httpx.Client, invoice: str) -> dict[str, Any]:
    """check-status of the test terminal's payment: the API's own view."""
    headers = {"Authorization": f"Bearer {token(client)['access_token']}"}
    answer = client.get(f"/check-status/payment/transaction/{invoice}", headers=headers)
    assert answer.status_code == 200, answer.text
    found: dict[str, Any] = answer.json()["transaction"]
    return found
