"""Helpers the tests share: start a gateway process and speak ePay to it like a shop."""

from __future__ import annotations

import itertools
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tolem.client._helpers import encrypt_json as encrypt
from tolem.testing import free_port, wait_ready

CLIENT_ID = "test"
CLIENT_SECRET = "yF587AV9Ms94qN2QShFzVR3vFnWkhjbAK3sG"
TERMINAL = "67e34d63-102f-4bd1-898e-370781d0074d"

#: Every published test card: (PAN, MMYY, CVC, expected reason code).
TEST_CARDS = [
    ("4405639704015096", "0125", "815", 0),
    ("4405639704015096", "0127", "321", 0),
    ("5522042705066736", "0125", "525", 0),
    ("5522042705066736", "0127", "775", 0),
    ("377514500004820", "0125", "4169", 487),
    ("377514500004820", "0128", "0198", 0),
    ("4003032704547597", "0920", "170", 465),
    ("5578342710750560", "0920", "254", 484),
]

_invoices = itertools.count(random.randrange(100_000))


def new_invoice(length: int = 12) -> str:
    """An invoice whose last six digits no other test uses."""
    tail = f"{next(_invoices) % 1_000_000:06d}"
    head = "".join(random.choice("0123456789") for _ in range(length - 6))
    return head + tail


@dataclass
class Gateway:
    base_url: str
    database_url: str
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes]
    _public_key: rsa.RSAPublicKey | None = field(default=None, repr=False)

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=30, **kwargs)

    @property
    def public_key(self) -> rsa.RSAPublicKey:
        if self._public_key is None:
            pem = httpx.get(f"{self.base_url}/public.rsa", timeout=10).content
            key = serialization.load_pem_public_key(pem)
            assert isinstance(key, rsa.RSAPublicKey)
            self._public_key = key
        return self._public_key

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """The ``tolem`` command against this gateway's database and data dir (its keys)."""
        env = {
            **os.environ,
            "TOLEM_DATABASE_URL": self.database_url,
            "TOLEM_DATA_DIR": str(self.data_dir),
            "TOLEM_POSTLINK_WORKER": "false",
        }
        return subprocess.run(
            [sys.executable, "-m", "tolem", *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            check=False,
        )


@contextmanager
def served_in_a_thread(
    app: Any, *, port: int = 0, log_level: str = "critical", timeout: float = 30
) -> Iterator[str]:
    """An ASGI app served by uvicorn in a thread of this process, on ``port`` (a free
    one by default) of 127.0.0.1, its lifespan run: its base URL."""
    port = port or free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level=log_level, lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        assert server.started, "the app did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@contextmanager
def start_gateway(
    data_dir: Path, database_url: str, *, workers: int = 1, extra_env: dict[str, str] | None = None
) -> Iterator[Gateway]:
    port = free_port()
    env = {
        **os.environ,
        "TOLEM_DATA_DIR": str(data_dir),
        "TOLEM_DATABASE_URL": database_url,
        "TOLEM_LOG_LEVEL": "debug",
        # Test payments name shops' postLinks (example.kz, …): nothing may leave this
        # machine, so only gateways started for delivery tests deliver.
        "TOLEM_POSTLINK_WORKER": "false",
        **(extra_env or {}),
    }
    log_path = data_dir / "serve.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tolem",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                str(workers),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    gw = Gateway(f"http://127.0.0.1:{port}", database_url, data_dir, log_path, process)
    try:
        wait_ready(gw.base_url, gw.process, gw.log_path, timeout=60)
        yield gw
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def token(
    client: httpx.Client,
    *,
    invoice: str | None = None,
    amount: Any = 100,
    currency: str = "KZT",
    terminal: str = TERMINAL,
    multipart: bool = True,
    **extra: Any,
) -> dict[str, Any]:
    """A token as the original document asks for it; ``invoice=None`` omits the invoice."""
    form: dict[str, Any] = {
        "grant_type": "client_credentials",
        "scope": "webapi usermanagement email_send verification statement statistics payment",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "terminal": terminal,
        **extra,
    }
    if invoice is not None:
        form |= {"invoiceID": invoice, "amount": str(amount), "currency": currency}
    if multipart:
        response = client.post("/oauth2/token", files={k: (None, str(v)) for k, v in form.items()})
    else:
        response = client.post("/oauth2/token", data={k: str(v) for k, v in form.items()})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def cryptogram(gw: Gateway, pan: str, exp: str, cvc: str, terminal: str = TERMINAL) -> str:
    return encrypt(gw.public_key, {"hpan": pan, "expDate": exp, "cvc": cvc, "terminalId": terminal})


def payment_body(
    gw: Gateway,
    invoice: str,
    *,
    amount: Any = 100,
    card: tuple[str, str, str] = ("4405639704015096", "0125", "815"),
    **extra: Any,
) -> dict[str, Any]:
    return {
        "amount": amount,
        "currency": "KZT",
        "name": "JON JONSON",
        "cryptogram": cryptogram(gw, *card),
        "invoiceId": invoice,
        "invoiceIdAlt": "8564546",
        "description": "test payment",
        "accountId": "uuid000001",
        "email": "jj@example.com",
        "phone": "77777777777",
        "cardSave": True,
        "data": json.dumps({"statement": {"name": "Arman   Ali", "invoiceID": "80000016"}}),
        "postLink": "https://testmerchant/order/1123",
        "failurePostLink": "https://testmerchant/order/1123/fail",
        **extra,
    }


def cryptopay(
    client: httpx.Client, access_token: str, body: Any, *, path: str = "/payment/cryptopay"
) -> httpx.Response:
    return client.post(path, json=body, headers={"Authorization": f"Bearer {access_token}"})


def pay(
    gw: Gateway,
    client: httpx.Client,
    *,
    amount: Any = 100,
    card: tuple[str, str, str] = ("4405639704015096", "0125", "815"),
    **extra: Any,
) -> httpx.Response:
    """Token plus cryptopay for a fresh invoice: the whole merchant flow."""
    invoice = new_invoice()
    tok = token(client, invoice=invoice, amount=amount)
    return cryptopay(
        client, tok["access_token"], payment_body(gw, invoice, amount=amount, card=card, **extra)
    )


def decimal(value: Any) -> Decimal:
    return Decimal(str(value))


def query(database_url: str, sql: str, **params: Any) -> list[Any]:
    """Rows of one SQL statement against a gateway's database, read from outside it."""
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text(sql), params))
    finally:
        engine.dispose()
