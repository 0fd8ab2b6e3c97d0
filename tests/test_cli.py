"""The ``tolem`` command, run as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support import Gateway, cryptogram, cryptopay, new_invoice, payment_body
from tolem import reasons


def tolem(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tolem", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        check=False,
    )


def test_cards_lists_every_card_and_trigger() -> None:
    result = tolem("cards", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert {r["reasonCode"] for r in rows if r["outcome"] == "decline"} >= set(reasons.REASONS)
    visa = next(r for r in rows if r["pan"] == "4405639704015096" and r["expiry"] == "01/25")
    assert visa == {
        "pan": "4405639704015096",
        "expiry": "01/25",
        "cvc": "815",
        "outcome": "approve",
        "reasonCode": 0,
        "reason": "success",
        "threeDSecure": False,
        "note": "ePay test Visa",
    }
    table = tolem("cards")
    assert table.returncode == 0 and "4405639704015096" in table.stdout


def _merchant(gateway: Gateway, *extra: str) -> dict[str, Any]:
    result = tolem(
        "merchant",
        "create",
        "--name",
        "Kofe Almaty",
        "--json",
        "--database-url",
        gateway.database_url,
        *extra,
    )
    assert result.returncode == 0, result.stderr
    created: dict[str, Any] = json.loads(result.stdout)
    return created


def _token(client: Any, creds: dict[str, Any], invoice: str) -> str:
    response = client.post(
        "/oauth2/token",
        data={
            "grant_type": "client_credentials",
            "scope": "payment",
            "client_id": creds["clientId"],
            "client_secret": creds["clientSecret"],
            "terminal": creds["terminalId"],
            "invoiceID": invoice,
            "amount": "2500",
            "currency": "KZT",
        },
    )
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def test_new_merchant_pays_and_one_step_terminal_charges(gateway: Gateway) -> None:
    two_step = _merchant(gateway)
    one_step = _merchant(gateway, "--one-step")
    assert len(two_step["clientSecret"]) >= 40

    listed = tolem("merchant", "list", "--json", "--database-url", gateway.database_url)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    by_client = {r["clientId"]: r for r in rows}
    assert by_client["test"]["terminals"][0]["id"] == "67e34d63-102f-4bd1-898e-370781d0074d"
    assert by_client[one_step["clientId"]]["terminals"][0]["twoStep"] is False
    assert "clientSecret" not in listed.stdout and one_step["clientSecret"] not in listed.stdout

    with gateway.client() as client:
        for creds, status in ((two_step, "AUTH"), (one_step, "CHARGE")):
            invoice = new_invoice()
            body = payment_body(gateway, invoice, amount=2500) | {
                "cryptogram": cryptogram(
                    gateway, "4405639704015096", "0125", "815", creds["terminalId"]
                )
            }
            response = cryptopay(client, _token(client, creds, invoice), body)
            assert response.status_code == 200, response.text
            assert response.json()["status"] == status

        # A merchant's token cannot name another merchant's terminal.
        response = client.post(
            "/oauth2/token",
            data={
                "grant_type": "client_credentials",
                "client_id": two_step["clientId"],
                "client_secret": two_step["clientSecret"],
                "terminal": one_step["terminalId"],
            },
        )
        assert response.status_code == 400 and "terminal" in response.json()["message"]


def test_db_upgrade_and_merchant_create_refuse_bad_input(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    upgraded = tolem("db", "upgrade", "--database-url", url)
    assert upgraded.returncode == 0, upgraded.stderr
    blank = tolem("merchant", "create", "--name", "  ", "--database-url", url)
    assert blank.returncode != 0 and "name" in blank.stderr.lower()


def test_production_mode_refuses_to_start_without_keys_or_acquirer(tmp_path: Path) -> None:
    result = tolem("serve", "--mode", "production", "--port", "1", cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    out = result.stdout + result.stderr
    assert "TOLEM_RSA_PRIVATE_KEY_FILE" in out and "TOLEM_TOKEN_KEY" in out
    assert "Traceback" not in out
    assert not (tmp_path / ".tolem" / "keys").exists()  # production never generates keys


def test_production_mode_with_keys_still_needs_an_acquirer(tmp_path: Path) -> None:
    import base64
    import os

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp_path / "rsa.pem"
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    env = {
        **os.environ,
        "TOLEM_MODE": "production",
        "TOLEM_RSA_PRIVATE_KEY_FILE": str(pem),
        "TOLEM_TOKEN_KEY": base64.b64encode(os.urandom(32)).decode(),
        "TOLEM_FINGERPRINT_KEY": base64.b64encode(os.urandom(32)).decode(),
        "TOLEM_CARD_KEY": base64.b64encode(os.urandom(32)).decode(),
    }
    result = subprocess.run(
        [sys.executable, "-m", "tolem", "serve", "--port", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=env,
        check=False,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "TOLEM_ACQUIRER" in result.stdout + result.stderr
