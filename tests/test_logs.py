"""The log redaction filter: the safety net behind 'never log a PAN'."""

from __future__ import annotations

import io
import json
import logging
import re
from pathlib import Path

import pytest

from tests.support import Gateway, new_invoice, payment_body, start_gateway, token
from tolem.logs import RedactCards, redact


def test_redact_masks_luhn_valid_numbers_only() -> None:
    assert redact("card 4405639704015096 paid") == "card 440563...5096 paid"
    assert redact("rrn 504355533594 ok") == "rrn 504355533594 ok"  # not a card number
    assert redact("x4405639704015096") == "x440563...5096"
    line = '"POST /payments/cards/confirmPayment?Access=abc-DEF_123&x=1 HTTP/1.1" 303'
    assert redact(line) == '"POST /payments/cards/confirmPayment?Access=***&x=1 HTTP/1.1" 303'


def test_messages_arguments_and_tracebacks_are_redacted() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactCards())
    logger = logging.getLogger("tolem.test_logs")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("paying with %s", "5522042705066736")
        try:
            raise ValueError("bad card 4003032704547597")
        except ValueError:
            logger.exception("failed")
        logger.warning("stack", stack_info=True, extra={"x": "377514500004820"})
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    for pan in ("5522042705066736", "4003032704547597"):
        assert pan not in text
    assert "552204...6736" in text and "400303...7597" in text


def test_an_id_whose_last_group_passes_luhn_is_not_masked() -> None:
    from tolem.carddata import luhn_ok
    from tolem.logs import redact

    assert luhn_ok("334099988050")
    line = "postLink 0f871341-180b-46d5-b180-334099988050 card 4405639704015096"
    assert redact(line) == "postLink 0f871341-180b-46d5-b180-334099988050 card 440563...5096"


def test_typed_card_numbers_and_url_forms_are_masked() -> None:
    assert redact("4405 6397 0401 5096") == "440563...5096"
    assert redact("4405-6397-0401-5096 x") == "440563...5096 x"
    assert redact("?q=4405%206397%200401%205096&a=1") == "?q=440563...5096&a=1"
    assert redact("?q=4405+6397+0401+5096") == "?q=440563...5096"
    # A card number among other typed numbers: only its stretch is masked.
    assert redact("12 34 4405 6397 0401 5096 77 88") == "12 34 440563...5096 77 88"
    assert redact("1 4405639704015096 2") == "1 440563...5096 2"
    # A run of plain digits longer than any card number is not one.
    assert redact("44056397040150961234") == "44056397040150961234"
    # Dates and times are not card numbers.
    line = "2026-11-30 03:25:32,616 INFO tolem 13830 - 1234"
    assert redact(line) == line


def test_cvc_parameters_are_masked_by_name() -> None:
    assert (
        redact("/x?cvc=815&cvv2=123&CVC2=1&csc=9&a=1") == "/x?cvc=***&cvv2=***&CVC2=***&csc=***&a=1"
    )


def test_json_lines_are_redacted_in_every_field() -> None:
    import json

    from tolem.logs import JsonFormatter, request_id

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("tolem.test_logs.json")
    logger.addHandler(handler)
    logger.propagate = False
    token = request_id.set("4405-6397-0401-5096")
    try:
        logger.warning(
            "paid %s", "5522 0427 0506 6736", extra={"path": "/p?card=4003032704547597&cvc=170"}
        )
        try:
            raise ValueError("bad card 377514500004820")
        except ValueError:
            logger.exception("failed")
    finally:
        request_id.reset(token)
        logger.removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["message"] for line in lines] == ["paid 552204...6736", "failed"]
    assert lines[0]["request_id"] == "440563...5096"
    assert lines[0]["path"] == "/p?card=400303...7597&cvc=***"
    assert {"time", "level", "logger", "message", "request_id"} <= set(lines[0])
    assert "377514...4820" in lines[1]["exception"] and "377514500004820" not in stream.getvalue()


# --- Against a real gateway: card numbers in every field, header and body ----------------

#: Luhn-valid card numbers, each as typed three ways.
SWEEP_PANS = ("4405639704015096", "5522042705066736", "4000003000000006", "377514500004820")
SWEEP_CVC = "9187"
_SEPARATORS = re.compile(r"[ +\-]|%20|%2[dD]")


def _typed(pan: str) -> list[str]:
    groups = [pan[i : i + 4] for i in range(0, len(pan), 4)]
    return [pan, " ".join(groups), "-".join(groups)]


def _hostile_headers(pan: str) -> dict[str, str]:
    spaced, dashed = _typed(pan)[1:]
    return {
        "Authorization": f"Bearer {pan}",
        "X-Request-ID": dashed,
        "User-Agent": f"Mozilla/5.0 card {spaced}",
        "Referer": f"https://shop.kz/pay?card={pan}&cvc={SWEEP_CVC}",
        "X-Card-Number": spaced,
        "X-Cvc": SWEEP_CVC,
    }


def _sweep(gw: Gateway) -> None:
    """Send card numbers and CVCs to every endpoint family, in every place."""
    with gw.client() as client:
        for pan in SWEEP_PANS:
            plain, spaced, dashed = _typed(pan)
            headers = _hostile_headers(pan)
            query = {"card": spaced, "pan": dashed, "cvc": SWEEP_CVC, "cvv2": SWEEP_CVC}
            everything = {
                name: value
                for name, value in zip(
                    ("hpan", "pan", "cardNumber", "name", "description", "accountId", "email"),
                    (plain, spaced, dashed, plain, spaced, dashed, f"{plain}@example.com"),
                    strict=True,
                )
            } | {"cvc": SWEEP_CVC, "cvv": SWEEP_CVC}
            # Tokens: form fields, wrong types, malformed bodies.
            token_form = {
                "grant_type": "client_credentials",
                "scope": "payment",
                "client_id": plain,
                "client_secret": spaced,
                "terminal": dashed,
                "invoiceID": plain,
                "amount": spaced,
                "currency": dashed,
                "postLink": f"https://shop.kz/n?card={plain}",
            } | everything
            client.post("/oauth2/token", data=token_form, headers=headers, params=query)
            client.post(
                "/oauth2/token",
                files={k: (None, v) for k, v in token_form.items()},
                headers=headers,
            )
            client.post(
                "/oauth2/token",
                content=f"{plain}&{spaced}=&&%%",
                headers=headers | {"Content-Type": "application/x-www-form-urlencoded"},
            )
            # cryptopay: a real token, every field a card number, then broken bodies.
            invoice = new_invoice()
            tok = token(client, invoice=invoice)["access_token"]
            auth = {"Authorization": f"Bearer {tok}"}
            body = {
                "amount": 100,
                "currency": "KZT",
                "invoiceId": invoice,
                "cryptogram": plain,
                "invoiceIdAlt": spaced,
                "phone": dashed,
                "data": json.dumps({"card": plain, "cvc": SWEEP_CVC}),
                "postLink": f"https://shop.kz/n?card={dashed}",
                "failurePostLink": f"https://shop.kz/f/{plain}",
            } | everything
            for path in ("/payment/cryptopay", "/api/payment/cryptopay"):
                client.post(path, json=body, headers=headers | auth, params=query)
                client.post(path, json=body, headers=headers)
                client.post(
                    path,
                    content=f'{{"hpan": "{plain}", "cvc": "{SWEEP_CVC}", broken',
                    headers=headers | auth | {"Content-Type": "application/json"},
                )
                client.post(
                    path,
                    content=f"hpan={plain}&cvc={SWEEP_CVC}",
                    headers=headers | auth | {"Content-Type": "text/plain"},
                )
                client.post(
                    path,
                    content=(f"{spaced} cvc {SWEEP_CVC} " * 5000).encode(),
                    headers=headers | auth | {"Content-Type": "application/json"},
                )
            # A real payment with the card, and one whose cryptogram holds a bad CVC.
            for cvc in ("815", SWEEP_CVC):
                invoice = new_invoice()
                tok = token(client, invoice=invoice)["access_token"]
                paid = payment_body(gw, invoice, card=(plain, "1230", cvc))
                answer = client.post(
                    "/payment/cryptopay",
                    json=paid,
                    headers=headers | {"Authorization": f"Bearer {tok}"},
                )
                assert answer.status_code in (200, 400), answer.text
            # Status, operations, saved cards.
            for path in (
                f"/check-status/payment/transaction/{plain}",
                f"/check-status/payment/transaction/{spaced}",
                f"/operation/{dashed}",
                f"/cards/{plain}",
                f"/{plain}",
            ):
                client.get(path, headers=headers | auth, params=query)
                client.get(path, headers=headers, params=query)
            for path in (f"/operation/{plain}/refund", f"/card/deactivate/{spaced}"):
                client.post(path, json=everything, headers=headers | auth, params=query)
            client.post("/payments/cards/auth", json=body, headers=headers | auth)
            # The hosted page: its link, its form, its 3-D Secure step.
            client.get("/payform/", params={"params": plain, **query}, headers=headers)
            client.get(f"/payform/?params={spaced}&card={dashed}", headers=headers)
            client.post(
                "/payform/pay",
                data={"params": plain, "pan": spaced, "exp": "1230", "cvc": SWEEP_CVC} | everything,
                headers=headers,
            )
            client.get(f"/payform/result/{plain}", params=query, headers=headers)
            client.post(f"/payform/3ds/{plain}/answer", data=everything, headers=headers)
            # The cabinet's login, with and without its CSRF token, and its API.
            page = client.get("/cabinet/login", headers=headers, params=query)
            csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
            for form in ({"email": plain, "password": spaced}, {"email": dashed}):
                if csrf:
                    form |= {"csrf": csrf.group(1)}
                client.post("/cabinet/login", data=form | everything, headers=headers)
            client.post("/operations", json={"searchParameters": everything}, headers=headers)
            # 3-D Secure pages and confirmation.
            acs = {"PaReq": plain, "MD": spaced, "TermUrl": f"https://shop.kz/t?card={dashed}"}
            client.post("/acs/pa", data=acs | everything, headers=headers, params=query)
            client.post("/acs/pa/answer", data=acs | {"code": plain}, headers=headers)
            client.post(
                "/payment/confirm",
                json={"id": plain, "pares": spaced, "md": dashed},
                headers=headers | auth,
            )
            client.post(
                f"/payments/cards/confirmPayment?Access={plain}&cvc={SWEEP_CVC}",
                data=acs,
                headers=headers,
            )
            client.get(f"/docs?card={spaced}", headers=headers)


def _assert_no_card_number(name: str, text: str) -> None:
    flat = _SEPARATORS.sub("", text)
    for pan in SWEEP_PANS:
        assert pan not in flat, f"{pan} found in {name}"


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_no_card_number_reaches_the_logs_or_the_database(log_format: str, tmp_path: Path) -> None:
    database = tmp_path / "tolem.db"
    env = {"TOLEM_LOG_FORMAT": log_format, "TOLEM_LOG_LEVEL": "debug"}
    with start_gateway(tmp_path, f"sqlite:///{database}", extra_env=env) as gw:
        _sweep(gw)
    log = gw.log_text()
    # The requests were made and logged, with their ids.
    assert log.count("/payment/cryptopay") >= 4 * len(SWEEP_PANS), log[-3000:]
    assert "440563...5096" in log
    if log_format == "json":
        records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
        access = [r for r in records if r["logger"] == "tolem.access"]
        assert len(access) > 100 and all(r["request_id"] != "-" for r in access)
        assert {r["status"] for r in access} >= {200, 400, 401, 404, 413}
    _assert_no_card_number("the log", log)
    for needle in (f"cvc={SWEEP_CVC}", f"cvv2={SWEEP_CVC}", f'"cvc": "{SWEEP_CVC}"'):
        assert needle not in log, needle
    files = sorted(tmp_path.glob("tolem.db*"))
    assert database in files
    for path in files:
        _assert_no_card_number(path.name, path.read_bytes().decode("latin-1"))
