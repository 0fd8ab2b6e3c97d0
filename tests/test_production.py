"""Production mode (issue 10): what it refuses to start with, test cards only on test
terminals, behind a TLS proxy (X-Forwarded-*, HSTS), and rotating the cryptogram key
and the card key without stopping payments; with the real CLI, over real HTTP, on SQLite
and PostgreSQL."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.payform_support import payform_link, payment_object
from tests.secure3d_support import VISA_3DS
from tests.support import (
    Gateway,
    encrypt,
    new_invoice,
    payment_body,
    query,
    start_gateway,
)
from tests.support import token as support_token
from tolem import sandbox
from tolem.cards.vault import key_id
from tolem.config import Settings
from tolem.db.engine import Database
from tolem.db.migrate import prepare_database, upgrade
from tolem.keys import load_keyring
from tolem.merchants.service import create_merchant
from tolem.notifications import signing
from tolem.processor.base import (
    AuthenticationRefused,
    AuthorizationRequest,
    ProcessorResult,
)

ROOT = Path(__file__).resolve().parent.parent
VISA = ("4405639704015096", "0125", "815")
#: The simulator declines this card with 465 (expired card): a trigger of the sandbox.
TRIGGER = ("4003032704547597", "0920", "170")


# --- a toy acquirer: the live connector of these gateways ------------------------------


class ToyAcquirer:
    """Approves everything and notes each call (last four digits only) in a file, so a
    test can tell which payments reached the live connector and not the simulator."""

    def __init__(self, log: Path) -> None:
        self.log = log

    def _note(self, **entry: Any) -> None:
        with self.log.open("a") as handle:
            handle.write(json.dumps(entry) + "\n")

    def authorize(self, request: AuthorizationRequest) -> ProcessorResult:
        self._note(call="authorize", reference=request.reference, last4=request.card.pan[-4:])
        return ProcessorResult(True, 0, rrn="777000000001", approval_code="123456", issuer="TOY")

    def capture(self, reference: str, auth_reference: str, amount: Decimal) -> ProcessorResult:
        self._note(call="capture", reference=reference)
        return ProcessorResult(True, 0)

    def void(self, reference: str, auth_reference: str) -> ProcessorResult:
        self._note(call="void", reference=reference)
        return ProcessorResult(True, 0)

    def refund(self, reference: str, auth_reference: str, amount: Decimal) -> ProcessorResult:
        self._note(call="refund", reference=reference)
        return ProcessorResult(True, 0)

    def complete_authentication(self, reference: str, pa_res: str, md: str) -> ProcessorResult:
        raise AuthenticationRefused(100, "the toy acquirer never asks for 3-D Secure")

    def inquire(self, reference: str) -> ProcessorResult | None:
        return None


def toy_acquirer(settings: Settings, db: Database) -> ToyAcquirer:
    return ToyAcquirer(Path(os.environ["TOLEM_TEST_TOY_LOG"]))


def toy_calls(folder: Path) -> list[dict[str, Any]]:
    log = folder / "toy.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


# --- keys and environments -------------------------------------------------------------


def random_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def rsa_file(path: Path) -> Path:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def production_env(folder: Path, database_url: str, **overrides: str) -> dict[str, str]:
    """Everything a production gateway needs, with keys of its own."""
    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {
        "TOLEM_MODE": "production",
        "TOLEM_DATA_DIR": str(folder),
        "TOLEM_DATABASE_URL": database_url,
        "TOLEM_RSA_PRIVATE_KEY_FILE": str(rsa_file(folder / "rsa.pem")),
        "TOLEM_TOKEN_KEY": random_key(),
        "TOLEM_FINGERPRINT_KEY": random_key(),
        "TOLEM_CARD_KEY": random_key(),
        "TOLEM_ACQUIRER": f"{__name__}:toy_acquirer",
        "TOLEM_TEST_TOY_LOG": str(folder / "toy.log"),
        "TOLEM_POSTLINK_WORKER": "false",
        "PYTHONPATH": pythonpath,
    }
    return env | overrides


def tolem(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The ``tolem`` command as an operator runs it, with only these settings."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("TOLEM_")}
    return subprocess.run(
        [sys.executable, "-m", "tolem", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=inherited | env,
        cwd=env["TOLEM_DATA_DIR"],
        check=False,
    )


def refusal(env: dict[str, str]) -> str:
    """``tolem serve`` must refuse to start: exit 2, a clear message, no traceback."""
    result = tolem(env, "serve", "--host", "127.0.0.1", "--port", "1")
    out = result.stdout + result.stderr
    assert result.returncode == 2, out
    assert "tolem cannot start" in out and "Traceback" not in out, out
    return " ".join(out.split())  # rich wraps long lines


@contextmanager
def serving(env: dict[str, str]) -> Iterator[Gateway]:
    folder = Path(env["TOLEM_DATA_DIR"])
    with start_gateway(folder, env["TOLEM_DATABASE_URL"], extra_env=env) as gw:
        yield gw


@dataclass
class Shop:
    client_id: str
    client_secret: str
    terminal_id: str
    public_key: rsa.RSAPublicKey | None = field(default=None, repr=False)

    def token(self, client: httpx.Client, invoice: str, amount: int = 100) -> str:
        return str(self.token_response(client, invoice, amount)["access_token"])

    def token_response(
        self, client: httpx.Client, invoice: str, amount: int = 100
    ) -> dict[str, Any]:
        response = client.post(
            "/oauth2/token",
            data={
                "grant_type": "client_credentials",
                "scope": "payment",
                "client_id": self.client_id,
                "client_secret": self.client_secret,
                "terminal": self.terminal_id,
                "invoiceID": invoice,
                "amount": str(amount),
                "currency": "KZT",
            },
        )
        assert response.status_code == 200, response.text
        answer: dict[str, Any] = response.json()
        return answer


def new_shop(env: dict[str, str], name: str, *, test_terminal: bool = False) -> Shop:
    args = ["merchant", "create", "--name", name, "--json"]
    created = tolem(env, *args, *(["--test-terminal"] if test_terminal else []))
    assert created.returncode == 0, created.stdout + created.stderr
    data = json.loads(created.stdout)
    return Shop(data["clientId"], data["clientSecret"], data["terminalId"])


def public_key(gw: Gateway) -> rsa.RSAPublicKey:
    key = serialization.load_pem_public_key(httpx.get(f"{gw.base_url}/public.rsa").content)
    assert isinstance(key, rsa.RSAPublicKey)
    return key


def pay(
    gw: Gateway,
    client: httpx.Client,
    shop: Shop,
    *,
    card: tuple[str, str, str] = VISA,
    key: rsa.RSAPublicKey | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> httpx.Response:
    """Token plus cryptopay, the cryptogram made with ``key`` (default: /public.rsa now)."""
    invoice = new_invoice()
    body = payment_body(gw, invoice) | extra
    pan, exp, cvc = card
    plain = {"hpan": pan, "expDate": exp, "cvc": cvc, "terminalId": shop.terminal_id}
    body["cryptogram"] = encrypt(key or public_key(gw), plain)
    body["terminalId"] = shop.terminal_id
    return client.post(
        "/payment/cryptopay",
        json=body,
        headers={"Authorization": f"Bearer {shop.token(client, invoice)}", **(headers or {})},
    )


def pay_saved(gw: Gateway, client: httpx.Client, shop: Shop, card_id: str) -> httpx.Response:
    invoice = new_invoice()
    body = {
        "amount": 100,
        "currency": "KZT",
        "name": "JON JONSON",
        "terminalId": shop.terminal_id,
        "invoiceId": invoice,
        "description": "repeat order",
        "accountId": "uuid000001",
        "paymentType": "cardId",
        "cardId": {"id": card_id},
    }
    return client.post(
        "/payments/cards/auth",
        json=body,
        headers={"Authorization": f"Bearer {shop.token(client, invoice)}"},
    )


# --- 1. what production refuses ----------------------------------------------------------


def _weak(value: bytes) -> str:
    return base64.b64encode(value).decode()


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("TOLEM_TOKEN_KEY", _weak(bytes(32)), "TOLEM_TOKEN_KEY is not random"),
        ("TOLEM_CARD_KEY", _weak(b"\x01\x02\x03\x04" * 8), "TOLEM_CARD_KEY is not random"),
        (
            "TOLEM_FINGERPRINT_KEY",
            _weak(b"correct horse battery staple 123"),
            "TOLEM_FINGERPRINT_KEY is text",
        ),
        ("TOLEM_CARD_PREVIOUS_KEYS", _weak(bytes(32)), "TOLEM_CARD_PREVIOUS_KEYS (key 1)"),
        ("TOLEM_RSA_PREVIOUS_KEY_FILES", "/nonexistent/old.pem", "TOLEM_RSA_PREVIOUS_KEY_FILES"),
        ("TOLEM_PUBLIC_BASE_URL", "http://pay.shop.kz", "is not https"),
        ("TOLEM_FORWARDED_ALLOW_IPS", "proxy.local", "not an IP address"),
    ],
)
def test_production_refuses_weak_keys_and_plain_http(
    tmp_path: Path, setting: str, value: str, message: str
) -> None:
    env = production_env(tmp_path, f"sqlite:///{tmp_path / 'tolem.db'}", **{setting: value})
    assert message in refusal(env)
    assert not (tmp_path / "keys").exists()  # and generates nothing


def test_production_refuses_one_key_for_two_purposes(tmp_path: Path) -> None:
    env = production_env(tmp_path, f"sqlite:///{tmp_path / 'tolem.db'}")
    env["TOLEM_CARD_KEY"] = env["TOLEM_TOKEN_KEY"]
    assert "TOLEM_CARD_KEY is the same key as TOLEM_TOKEN_KEY" in refusal(env)


def test_production_refuses_the_keys_sandbox_mode_generated(tmp_path: Path) -> None:
    generated = load_keyring(Settings(data_dir=tmp_path))  # a sandbox run in this data_dir
    keys = tmp_path / "keys"
    env = production_env(tmp_path, f"sqlite:///{tmp_path / 'tolem.db'}")
    for setting, file_name in (
        ("TOLEM_TOKEN_KEY", "token.key"),
        ("TOLEM_FINGERPRINT_KEY", "fingerprint.key"),
        ("TOLEM_CARD_KEY", "card.key"),
    ):
        sandbox_key = (keys / file_name).read_text().strip()
        message = refusal(env | {setting: sandbox_key})
        assert f"{setting} is the sandbox key {keys / file_name}" in message
    # The RSA key: the sandbox file itself, or a copy of it elsewhere.
    copy = tmp_path / "copied.pem"
    copy.write_bytes((keys / "rsa-private.pem").read_bytes())
    for path in (keys / "rsa-private.pem", copy):
        message = refusal(env | {"TOLEM_RSA_PRIVATE_KEY_FILE": str(path)})
        assert "the cryptogram RSA key is the sandbox key" in message
    # ... even as a previous key.
    message = refusal(env | {"TOLEM_RSA_PREVIOUS_KEY_FILES": str(copy)})
    assert "the cryptogram RSA key is the sandbox key" in message
    # The same data_dir with keys of its own starts (the sandbox's files stay as they were).
    with serving(env) as gw:
        assert (
            public_key(gw).public_numbers() != generated.rsa_current.public_key().public_numbers()
        )


def test_production_refuses_a_database_with_sandbox_credentials(
    tmp_path: Path, postgres_or_sqlite_empty_url: str
) -> None:
    # A database sandbox mode has used: the public test merchant and its login.
    db = Database(postgres_or_sqlite_empty_url)
    try:
        prepare_database(db, sandbox=True)
    finally:
        db.dispose()
    env = production_env(tmp_path, postgres_or_sqlite_empty_url)
    assert "ePay's public test merchant (ClientID 'test')" in refusal(env)
    # The worker refuses it too.
    worker = tolem(env, "worker")
    assert worker.returncode == 2 and "public test merchant" in worker.stdout, worker.stdout

    # A live merchant of its own whose ClientSecret is the published one.
    url = f"sqlite:///{tmp_path / 'other.db'}"
    db = Database(url)
    try:
        upgrade(db)
        with db.write() as session:
            create_merchant(session, "Lazy shop", client_id="lazy", is_test=True,
                            client_secret=sandbox.CLIENT_SECRET)  # fmt: skip
        (other := tmp_path / "other").mkdir()
        other_env = production_env(other, url)
        with serving(other_env):  # on test terminals only, it moves no money: allowed
            pass
        with db.write() as session:
            create_merchant(session, "Careless shop", client_id="careless", is_test=False,
                            client_secret=sandbox.CLIENT_SECRET)  # fmt: skip
    finally:
        db.dispose()
    message = refusal(other_env)
    assert "merchant careless has live terminals and the published sandbox ClientSecret" in (
        message
    )


def test_production_seeds_nothing_and_serves(tmp_path: Path) -> None:
    env = production_env(tmp_path, f"sqlite:///{tmp_path / 'tolem.db'}")
    with serving(env) as gw, gw.client() as client:
        assert query(gw.database_url, "SELECT count(*) FROM merchants")[0][0] == 0
        assert query(gw.database_url, "SELECT count(*) FROM cabinet_users")[0][0] == 0
        published = client.post(
            "/oauth2/token",
            data={
                "grant_type": "client_credentials",
                "client_id": sandbox.CLIENT_ID,
                "client_secret": sandbox.CLIENT_SECRET,
                "terminal": sandbox.TERMINAL_ID,
            },
        )
        assert published.status_code == 401, published.text
        shop = new_shop(env, "Live shop")
        paid = pay(gw, client, shop)
        assert paid.status_code == 200, paid.text
        assert paid.json()["status"] == "AUTH"


# --- 2 and 3. test terminals; behind a TLS proxy -------------------------------------------

PROXY_HEADERS = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, dict[str, str]]]:
    """A production gateway behind a TLS proxy at 127.0.0.1 (this test)."""
    folder = tmp_path_factory.mktemp("live")
    env = production_env(
        folder,
        f"sqlite:///{folder / 'tolem.db'}",
        TOLEM_FORWARDED_ALLOW_IPS="127.0.0.1",
        TOLEM_PUBLIC_BASE_URL="https://pay.shop.kz",
    )
    with serving(env) as gw:
        yield gw, env


def ip_of(gw: Gateway, response: httpx.Response) -> str:
    [(ip,)] = query(gw.database_url, "SELECT ip FROM transactions WHERE id = :i",
                    i=response.json()["id"])  # fmt: skip
    return str(ip)


def page_of(gw: Gateway, client: httpx.Client, shop: Shop) -> httpx.Response:
    invoice = new_invoice()
    obj = payment_object(shop.token_response(client, invoice), invoice,
                         terminal=shop.terminal_id)  # fmt: skip
    page = client.get(payform_link(gw, obj))
    assert page.status_code == 200, page.text
    return page


def test_test_cards_reach_the_simulator_only_on_test_terminals(
    live: tuple[Gateway, dict[str, str]],
) -> None:
    gw, env = live
    folder = Path(env["TOLEM_DATA_DIR"])
    live_shop = new_shop(env, "Live shop")
    test_shop = new_shop(env, "Test shop", test_terminal=True)
    with gw.client() as client:
        before = len(toy_calls(folder))
        # A sandbox trigger card on a live terminal is just a card: the acquirer decides.
        on_live = pay(gw, client, live_shop, card=TRIGGER)
        assert on_live.status_code == 200, on_live.text
        assert (on_live.json()["status"], on_live.json()["code"]) == ("AUTH", 0)
        calls = toy_calls(folder)[before:]
        assert [(c["call"], c["last4"]) for c in calls] == [("authorize", TRIGGER[0][-4:])]
        # On a terminal marked test, the simulator answers: 465, and the acquirer never hears.
        on_test = pay(gw, client, test_shop, card=TRIGGER)
        assert on_test.json()["code"] == 465, on_test.text
        approved = pay(gw, client, test_shop)
        assert approved.json()["status"] == "AUTH", approved.text
        assert len(toy_calls(folder)) == before + 1
        # The payment page lists the test cards only for the test terminal.
        assert 'id="sandbox-note"' in page_of(gw, client, test_shop).text
        assert 'id="sandbox-note"' not in page_of(gw, client, live_shop).text


def test_behind_the_proxy_forwarded_headers_count(live: tuple[Gateway, dict[str, str]]) -> None:
    gw, env = live
    shop = new_shop(env, "Proxied shop")
    with gw.client() as client:
        paid = pay(gw, client, shop, headers=PROXY_HEADERS)
        assert paid.status_code == 200, paid.text
        assert ip_of(gw, paid) == "203.0.113.7"  # the customer's, not the proxy's
        # Links the gateway makes from the request carry the proxy's https.
        moved = client.get("/payform", headers=PROXY_HEADERS, follow_redirects=False)
        assert moved.headers["location"].startswith("https://"), moved.headers
        # Links it hands out name its public https address: the shops' script, the ACS.
        assert '"https://pay.shop.kz/payform/"' in client.get("/payform/payment-api.js").text
        test_shop = new_shop(env, "Proxied test shop", test_terminal=True)
        challenged = pay(gw, client, test_shop, card=VISA_3DS)
        assert challenged.json()["secure3D"]["action"] == "https://pay.shop.kz/acs/pa", (
            challenged.text
        )
        page = page_of(gw, client, shop)
        # HSTS on pages, not on API answers.
        assert page.headers["strict-transport-security"] == "max-age=31536000"
        assert client.get("/cabinet/login").headers["strict-transport-security"]
        assert "strict-transport-security" not in paid.headers
        assert "strict-transport-security" not in client.get("/public.rsa").headers


def test_forwarded_headers_from_anyone_else_are_ignored(gateway: Gateway) -> None:
    """The sandbox gateway names no proxy: a client cannot pass itself off as another."""
    with gateway.client() as client:
        invoice = new_invoice()
        tok = support_token(client, invoice=invoice)["access_token"]
        paid = client.post(
            "/payment/cryptopay",
            json=payment_body(gateway, invoice),
            headers={"Authorization": f"Bearer {tok}", **PROXY_HEADERS},
        )
        assert paid.status_code == 200, paid.text
        assert ip_of(gateway, paid) == "127.0.0.1"
        moved = client.get("/payform", headers=PROXY_HEADERS, follow_redirects=False)
        assert moved.headers["location"].startswith("http://127.0.0.1:"), moved.headers
        page = client.get("/cabinet/login")
        assert page.status_code == 200 and "strict-transport-security" not in page.headers


# --- 4. key rotation -----------------------------------------------------------------------


def saved_cards(gw: Gateway) -> dict[str, tuple[str, str]]:
    rows = query(gw.database_url, "SELECT id, key_id, sealed FROM saved_cards")
    return {row.id: (row.key_id, row.sealed) for row in rows}


def test_rotating_the_cryptogram_key_and_the_card_key(
    tmp_path: Path, postgres_or_sqlite_empty_url: str
) -> None:
    old = production_env(tmp_path, postgres_or_sqlite_empty_url)
    shop = new_shop(old, "Rotating shop")
    signed = tolem(old, "merchant", "signing", shop.client_id)
    assert signed.returncode == 0, signed.stdout + signed.stderr
    secret = signed.stdout.strip()
    with serving(old) as gw, gw.client() as client:
        old_public = public_key(gw)
        first = pay(gw, client, shop)  # payment_body saves the card (cardSave)
        second = pay(gw, client, shop, card=("5522042705066736", "0125", "525"))
        card_ids = [first.json()["cardID"], second.json()["cardID"]]
        assert all(card_ids), (first.text, second.text)
        before = saved_cards(gw)
    old_kid = key_id(base64.b64decode(old["TOLEM_CARD_KEY"]))
    assert {kid for kid, _ in before.values()} == {old_kid}

    # Rotate both: new keys current, the old ones kept for the grace period.
    new = old | {
        "TOLEM_RSA_PRIVATE_KEY_FILE": str(rsa_file(tmp_path / "rsa-new.pem")),
        "TOLEM_RSA_PREVIOUS_KEY_FILES": old["TOLEM_RSA_PRIVATE_KEY_FILE"],
        "TOLEM_CARD_KEY": random_key(),
        "TOLEM_CARD_PREVIOUS_KEYS": old["TOLEM_CARD_KEY"],
    }
    new_kid = key_id(base64.b64decode(new["TOLEM_CARD_KEY"]))
    with serving(new) as gw, gw.client() as client:
        assert public_key(gw).public_numbers() != old_public.public_numbers()
        # A shop still holding the old /public.rsa pays during the grace period.
        late = pay(gw, client, shop, key=old_public, cardSave=False)
        assert (late.status_code, late.json()["status"]) == (200, "AUTH"), late.text
        fresh = pay(gw, client, shop, cardSave=False)
        assert fresh.json()["status"] == "AUTH", fresh.text
        # A card saved under the old card key pays, and is re-wrapped as it is used.
        again = pay_saved(gw, client, shop, card_ids[0])
        assert (again.status_code, again.json()["status"]) == (200, "AUTH"), again.text
        now = saved_cards(gw)
        assert now[card_ids[0]][0] == new_kid and now[card_ids[0]][1] != before[card_ids[0]][1]
        assert now[card_ids[1]] == before[card_ids[1]]  # not used yet: as it was
        # Retiring the old card key now would strand the second card: rewrap says so.
        retired = {k: v for k, v in new.items() if k != "TOLEM_CARD_PREVIOUS_KEYS"}
        stranded = tolem(retired, "keys", "rewrap")
        assert stranded.returncode == 1, stranded.stdout + stranded.stderr
        assert f"card {card_ids[1]}" in stranded.stdout and old_kid in stranded.stdout
        # With the old key still configured, everything moves to the new one.
        moved = tolem(new, "keys", "rewrap", "--json")
        assert moved.returncode == 0, moved.stdout + moved.stderr
        assert json.loads(moved.stdout) == {
            "keyId": new_kid,
            "cardsRewrapped": 1,
            "signingSecretsResealed": 1,
            "failed": [],
        }
        assert {kid for kid, _ in saved_cards(gw).values()} == {new_kid}
        again = tolem(new, "keys", "rewrap", "--json")
        assert json.loads(again.stdout)["cardsRewrapped"] == 0
        [(merchant_id, sealed)] = query(
            gw.database_url,
            "SELECT id, signing_secret FROM merchants WHERE client_id = :c",
            c=shop.client_id,
        )
        assert signing.unseal(base64.b64decode(new["TOLEM_CARD_KEY"]), merchant_id, sealed) == (
            secret
        )

    # The grace period is over: the old keys are removed.
    final = {k: v for k, v in new.items() if "PREVIOUS" not in k}
    with serving(final) as gw, gw.client() as client:
        stale = pay(gw, client, shop, key=old_public, cardSave=False)
        assert stale.status_code == 400, stale.text
        assert stale.json()["message"].startswith("cryptogram does not decrypt to card data")
        for card_id in card_ids:
            paid = pay_saved(gw, client, shop, card_id)
            assert paid.json()["status"] == "AUTH", paid.text
