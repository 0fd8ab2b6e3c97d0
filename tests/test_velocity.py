"""Velocity limits (issue 10): per client address, terminal and card, refused with 491.

One gateway per backend runs with all three limits on, two worker processes and the
proxy headers of 127.0.0.1 believed, so that each attempt can come from an address of
its own (``X-Forwarded-For``). Each test pays at a merchant of its own, so the counts of
one test never meet another's. "After the window" is made by moving the counted rows
back in time in the database (no sleeping): first to just inside the window (still
refused), then to just outside it (allowed again).
"""

from __future__ import annotations

import random
import secrets
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from sqlalchemy import event, update

from tests.payform_support import element, params_of, payform_link, payment_object, submit
from tests.support import (
    Gateway,
    cryptogram,
    cryptopay,
    new_invoice,
    payment_body,
    query,
    start_gateway,
    token,
)
from tolem import velocity
from tolem.carddata import luhn_complete
from tolem.config import Mode, Settings
from tolem.db.base import utcnow
from tolem.db.engine import Database
from tolem.merchants.service import Credentials, create_merchant
from tolem.pages import TEXT
from tolem.payments.models import Transaction
from tolem.processor.cards import trigger_pan

IP_LIMIT = velocity.Limit(4, 600)
TERMINAL_LIMIT = velocity.Limit(8, 300)
CARD_LIMIT = velocity.Limit(3, 900)
INSUFFICIENT_FUNDS = (trigger_pan(484), "0130", "123")
INVOICE_FIELDS = {"invoiceId", "id", "reference", "accountId"}


@pytest.fixture(scope="module")
def limited(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    env = {
        "TOLEM_VELOCITY_IP": str(IP_LIMIT),
        "TOLEM_VELOCITY_TERMINAL": str(TERMINAL_LIMIT),
        "TOLEM_VELOCITY_CARD": str(CARD_LIMIT),
        "TOLEM_FORWARDED_ALLOW_IPS": "127.0.0.1",
    }
    data_dir: Path = tmp_path_factory.mktemp("velocity")
    with start_gateway(data_dir, database_url, workers=2, extra_env=env) as gw:
        yield gw


@dataclass
class Shop:
    """A merchant of one test, and how it pays."""

    gw: Gateway
    creds: Credentials

    def token(self, client: httpx.Client, invoice: str, **extra: Any) -> dict[str, Any]:
        return token(
            client,
            invoice=invoice,
            terminal=self.creds.terminal_id,
            client_id=self.creds.client_id,
            client_secret=self.creds.client_secret,
            **extra,
        )

    def pay(
        self,
        client: httpx.Client,
        card: tuple[str, str, str],
        *,
        ip: str,
        amount: Any = 100,
        currency: str = "KZT",
        **extra: Any,
    ) -> httpx.Response:
        """Token plus cryptopay for a fresh invoice, sent from ``ip``."""
        invoice = new_invoice()
        tok = self.token(client, invoice, amount=amount, currency=currency)["access_token"]
        body = payment_body(self.gw, invoice, amount=amount, currency=currency, **extra)
        body["cryptogram"] = cryptogram(self.gw, *card, terminal=self.creds.terminal_id)
        return client.post(
            "/payment/cryptopay",
            json=body,
            headers={"Authorization": f"Bearer {tok}", "X-Forwarded-For": ip},
        )

    def age(self, seconds: int) -> None:
        """Move every payment of this shop ``seconds`` into the past."""
        db = Database(self.gw.database_url)
        try:
            with db.write() as session:
                session.execute(
                    update(Transaction)
                    .where(Transaction.merchant_id == self.creds.merchant_id)
                    .values(created_at=utcnow() - timedelta(seconds=seconds))
                )
        finally:
            db.dispose()

    def count(self) -> int:
        [(n,)] = query(
            self.gw.database_url,
            "SELECT count(*) FROM transactions WHERE merchant_id = :m",
            m=self.creds.merchant_id,
        )
        return int(n)


def new_shop(gw: Gateway) -> Shop:
    db = Database(gw.database_url)
    try:
        with db.write() as session:
            creds = create_merchant(session, f"velocity {secrets.token_hex(4)}")
    finally:
        db.dispose()
    return Shop(gw, creds)


@pytest.fixture
def shop(limited: Gateway) -> Shop:
    return new_shop(limited)


def new_card() -> tuple[str, str, str]:
    """A card the simulator approves that no other attempt uses."""
    digits = "".join(random.choice("0123456789") for _ in range(13))
    return (luhn_complete(f"41{digits}"), "0130", "123")  # no simulator card starts so


def new_ip() -> str:
    return f"10.{random.randrange(256)}.{random.randrange(256)}.{random.randrange(1, 255)}"


def code(response: httpx.Response) -> int:
    return int(response.json()["code"])


def assert_refused(response: httpx.Response, reference: httpx.Response | None = None) -> None:
    """491 in the shape of ePay's other payment refusals, the invoice fields echoed."""
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["code"] == 491 and body["message"] == "Exceeds frequency limit", body
    assert set(body) == {"code", "message", *INVOICE_FIELDS}
    assert body["id"] == "" and body["reference"] == ""
    assert body["invoiceId"] and body["accountId"] == "uuid000001"
    if reference is not None:  # another refusal of the same endpoint: the same keys
        assert set(reference.json()) == set(body)


def test_the_card_limit_counts_declines_and_ends_with_the_window(shop: Shop) -> None:
    with shop.gw.client() as client:
        declines = [shop.pay(client, INSUFFICIENT_FUNDS, ip=new_ip()) for _ in range(3)]
        assert [code(r) for r in declines] == [484] * CARD_LIMIT.attempts
        refused = shop.pay(client, INSUFFICIENT_FUNDS, ip=new_ip())
        assert_refused(refused, declines[0])
        assert shop.count() == CARD_LIMIT.attempts  # the refused attempt left no row
        assert code(shop.pay(client, new_card(), ip=new_ip())) == 0  # another card pays
        shop.age(CARD_LIMIT.seconds - 30)  # still inside the window
        assert code(shop.pay(client, INSUFFICIENT_FUNDS, ip=new_ip())) == 491
        shop.age(CARD_LIMIT.seconds + 1)  # the window is over
        assert code(shop.pay(client, INSUFFICIENT_FUNDS, ip=new_ip())) == 484


def test_the_address_limit_refuses_one_address_only(shop: Shop) -> None:
    ip = new_ip()
    with shop.gw.client() as client:
        paid = [shop.pay(client, new_card(), ip=ip) for _ in range(IP_LIMIT.attempts)]
        assert [code(r) for r in paid] == [0] * IP_LIMIT.attempts
        assert_refused(shop.pay(client, new_card(), ip=ip))
        assert code(shop.pay(client, new_card(), ip=new_ip())) == 0  # another address pays
        shop.age(IP_LIMIT.seconds - 30)
        assert code(shop.pay(client, new_card(), ip=ip)) == 491
        shop.age(IP_LIMIT.seconds + 1)
        assert code(shop.pay(client, new_card(), ip=ip)) == 0


def test_the_terminal_limit_refuses_one_terminal_only(shop: Shop, limited: Gateway) -> None:
    with shop.gw.client() as client:
        paid = [
            shop.pay(client, new_card(), ip=new_ip()) for _ in range(TERMINAL_LIMIT.attempts - 1)
        ]
        paid.append(shop.pay(client, INSUFFICIENT_FUNDS, ip=new_ip()))  # a decline counts
        assert [code(r) for r in paid] == [0] * (TERMINAL_LIMIT.attempts - 1) + [484]
        assert_refused(shop.pay(client, new_card(), ip=new_ip()))
        other = new_shop(limited)  # another merchant's terminal
        assert code(other.pay(client, new_card(), ip=new_ip())) == 0
        shop.age(TERMINAL_LIMIT.seconds - 30)
        assert code(shop.pay(client, new_card(), ip=new_ip())) == 491
        shop.age(TERMINAL_LIMIT.seconds + 1)
        assert code(shop.pay(client, new_card(), ip=new_ip())) == 0


def test_every_way_of_paying_counts_and_the_hosted_page_explains(shop: Shop) -> None:
    card = new_card()
    with shop.gw.client() as client:

        def on_the_page(**overrides: Any) -> httpx.Response:
            invoice = new_invoice()
            amount, currency = overrides.get("amount", 100), overrides.get("currency", "KZT")
            tok = shop.token(client, invoice, amount=amount, currency=currency)
            obj = payment_object(
                tok, invoice, terminal=shop.creds.terminal_id, language="eng", **overrides
            )
            link = payform_link(shop.gw, obj)
            assert client.get(link).status_code == 200
            pan, exp, cvc = card
            return submit(client, params_of(link), (pan, f"{exp[:2]}/{exp[2:]}", cvc))

        def with_saved_card(card_id: str) -> httpx.Response:
            invoice = new_invoice()
            tok = shop.token(client, invoice)["access_token"]
            body = {
                "amount": 100,
                "currency": "KZT",
                "name": "JON JONSON",
                "terminalId": shop.creds.terminal_id,
                "invoiceId": invoice,
                "description": "repeat order",
                "accountId": "uuid000001",
                "language": "rus",
                "paymentType": "cardId",
                "cardId": {"id": card_id},
                "postLink": "https://testmerchant/order/2",
            }
            return client.post(
                "/payments/cards/auth",
                json=body,
                headers={"Authorization": f"Bearer {tok}", "X-Forwarded-For": new_ip()},
            )

        # 1: cryptopay, saving the card; 2: the saved card; 3: a card verification on
        # the hosted page. Then both the saved card and the hosted page are refused.
        saved = shop.pay(client, card, ip=new_ip(), cardSave=True)
        assert code(saved) == 0, saved.text
        card_id = saved.json()["cardID"]
        assert code(with_saved_card(card_id)) == 0
        verified = on_the_page(amount=0, currency="USD", paymentType="cardVerification")
        assert verified.status_code == 303, verified.text
        statuses = query(
            shop.gw.database_url,
            "SELECT payment_type FROM transactions WHERE merchant_id = :m ORDER BY created_at",
            m=shop.creds.merchant_id,
        )
        assert [row.payment_type for row in statuses] == ["card", "cardId", "cardVerification"]
        assert_refused(with_saved_card(card_id))
        page = on_the_page()
    # The cardholder reads what happened and what to do.
    assert page.status_code == 400, page.text
    message = element(page.text, "form-error")
    assert message.startswith(TEXT["en"]["msg_velocity"]) and "491" in message
    assert shop.count() == CARD_LIMIT.attempts


def test_concurrent_attempts_cannot_slip_past_the_limit(shop: Shop) -> None:
    """20 attempts of one card at once, over two worker processes: exactly the limit
    gets through (SQLite: one writer at a time; PostgreSQL: the advisory lock)."""
    attempts = 20
    card = new_card()
    with shop.gw.client() as client:
        prepared = []
        for _ in range(attempts):
            invoice = new_invoice()
            tok = shop.token(client, invoice)["access_token"]
            body = payment_body(shop.gw, invoice)
            body["cryptogram"] = cryptogram(shop.gw, *card, terminal=shop.creds.terminal_id)
            prepared.append((tok, body, new_ip()))
    limits = httpx.Limits(max_connections=attempts, max_keepalive_connections=attempts)
    with shop.gw.client(limits=limits) as client, ThreadPoolExecutor(attempts) as pool:

        def send(item: tuple[str, dict[str, Any], str]) -> httpx.Response:
            tok, body, ip = item
            return client.post(
                "/payment/cryptopay",
                json=body,
                headers={"Authorization": f"Bearer {tok}", "X-Forwarded-For": ip},
            )

        responses = list(pool.map(send, prepared))
    codes = Counter(code(r) for r in responses)
    assert codes == {0: CARD_LIMIT.attempts, 491: attempts - CARD_LIMIT.attempts}, codes
    assert shop.count() == CARD_LIMIT.attempts


def test_limits_are_off_by_default_in_sandbox(gateway: Gateway) -> None:
    """The default sandbox gateway: one card from one address, more often than any
    production limit allows, is never refused (bench/run.py relies on it)."""
    attempts = int(velocity.PRODUCTION_DEFAULTS["card"].split("/")[0]) + 3
    with gateway.client() as client:
        responses = []
        for _ in range(attempts):
            invoice = new_invoice()
            tok = token(client, invoice=invoice)["access_token"]
            responses.append(cryptopay(client, tok, payment_body(gateway, invoice)))
    assert [r.status_code for r in responses] == [200] * attempts


def test_production_mode_limits_by_default() -> None:
    production = velocity.Limits.from_settings(Settings(mode=Mode.PRODUCTION))
    assert {kind: str(limit) for kind, limit in production.items()} == (
        velocity.PRODUCTION_DEFAULTS
    )
    assert all(limit.attempts > 0 and limit.seconds > 0 for _, limit in production.items())
    assert velocity.Limits.from_settings(Settings(mode=Mode.SANDBOX)).off
    # Each can be changed or turned off, in either mode.
    tuned = velocity.Limits.from_settings(
        Settings(mode=Mode.PRODUCTION, velocity_card="0", velocity_ip="50/60")
    )
    assert (tuned.card, tuned.ip) == (None, velocity.Limit(50, 60))
    assert velocity.Limits.from_settings(Settings(velocity_terminal="2/5")).terminal == (
        velocity.Limit(2, 5)
    )
    # The settings' descriptions (and so the docs' table) name the production values.
    for kind, value in velocity.PRODUCTION_DEFAULTS.items():
        description = Settings.model_fields[f"velocity_{kind}"].description
        assert description is not None and f"`{value}`" in description


@pytest.mark.parametrize("value", ["5", "0/60", "5/0", "-1/60", "a/b", "5/60/1", "5 per 60"])
def test_a_malformed_limit_is_refused_at_start(value: str) -> None:
    with pytest.raises(ValidationError, match="ATTEMPTS/SECONDS"):
        Settings(velocity_card=value)


def test_with_limits_off_the_check_runs_no_query(tmp_path: Path) -> None:
    """Off costs nothing: the claim's check returns before any statement."""
    db = Database(f"sqlite:///{tmp_path / 'off.db'}")
    statements: list[str] = []
    event.listen(db.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    tx = Transaction(merchant_id="m", terminal_id="t", ip="127.0.0.1", card_fingerprint="f")
    try:
        off = velocity.Limits.from_settings(Settings())
        assert off.off
        with db.write() as session:
            statements.clear()
            velocity.check(session, tx, off)
            assert statements == []
        assert velocity.Limits.from_settings(Settings(velocity_ip="1/1")).ip == velocity.Limit(1, 1)
        assert velocity.Limits.from_settings(Settings(velocity_ip="0")).off
    finally:
        db.dispose()
