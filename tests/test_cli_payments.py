"""``tolem pay``, ``status``, ``charge``, ``cancel`` and ``refund``: the CLI run as a user
runs it (a subprocess), against a real gateway.

Every run goes through :func:`cli` or :class:`CliProcess`, which fail the test if the
card number or the CVC given to the run shows up anywhere in its output.
"""

from __future__ import annotations

import json
import os
import pty
import queue
import re
import select
import signal
import socket
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import IO, Any
from urllib.parse import urljoin

import httpx
import pytest

from tests.faulty_proxy import FORWARD_THEN_504, running_proxy
from tests.secure3d_support import TERM_URL, hidden, otp
from tests.support import (
    CLIENT_ID,
    CLIENT_SECRET,
    TERMINAL,
    Gateway,
    free_port,
    new_invoice,
)
from tolem.client import EpayClient, Payment, Transaction
from tolem.processor.cards import THREE_DS

VISA = ("4405639704015096", "01/25", "815")
DECLINED_484 = ("5578342710750560", "09/20", "254")  # a published "lock" card
VISA_3DS = (THREE_DS[0].pan, "12/30", "739")
VISA_3DS_THEN_484 = (THREE_DS[2].pan, "12/30", "739")
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
OPEN_LINE = re.compile(r"Open (http://127\.0\.0\.1:(\d+)/) in a browser to pass 3-D Secure")
DEADLINE = 60.0
INSUFFICIENT_FUNDS_RU = "Недостаточно средств"
NOT_FOUND_RU = "Не найдено"  # noqa: RUF001 (Russian)
UUID_ZERO = "00000000-0000-4000-8000-000000000000"


# --- running the CLI ----------------------------------------------------------------


def _environment() -> dict[str, str]:
    """The test's environment without a developer's TOLEM_URL & co.; wide, UTF-8 output."""
    cli_vars = ("TOLEM_URL", "TOLEM_CLIENT_ID", "TOLEM_CLIENT_SECRET", "TOLEM_TERMINAL_ID")
    env = {k: v for k, v in os.environ.items() if k not in cli_vars}
    return env | {"PYTHONIOENCODING": "utf-8", "COLUMNS": "200"}


def card_data(args: Sequence[str], stdin: str = "") -> tuple[list[str], list[str]]:
    """The card numbers and CVCs a run was given: after --card and --cvc, and on
    standard input (the card number first if --card is missing, then the CVC)."""
    pans = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--card"]
    cvcs = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--cvc"]
    lines = [line.strip() for line in stdin.splitlines() if line.strip()]
    if "--card" not in args and lines:
        pans.append(lines.pop(0))
    if "--cvc" not in args and lines:
        cvcs.append(lines.pop(0))
    return pans, cvcs


def assert_no_card_data(output: str, pans: Sequence[str], cvcs: Sequence[str]) -> None:
    """Neither a card number (as given, or as its digits) nor a CVC as a token of its own
    (a CVC's digits may well occur inside a reference, a UUID or a time)."""
    for pan in pans:
        digits = re.sub(r"\D", "", pan)
        assert pan not in output, "the card number was printed"
        if len(digits) >= 12:
            assert digits not in output, "the card number was printed"
    for cvc in cvcs:
        if cvc.strip():
            token = rf"(?<![0-9A-Za-z]){re.escape(cvc.strip())}(?![0-9A-Za-z])"
            assert not re.search(token, output), "the CVC was printed"
    assert not re.search(r"\bcvc\b\W*[\"':=]\s*\"?\d", output, re.IGNORECASE), "a CVC field"


@dataclass
class Run:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        assert self.stdout.count("\n") == 1, f"not one line of JSON:\n{self.stdout}"
        return json.loads(self.stdout)

    def __str__(self) -> str:
        return f"exit {self.returncode}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


def cli(*args: str, stdin: str = "", env: dict[str, str] | None = None) -> Run:
    result = subprocess.run(
        [sys.executable, "-m", "tolem", *args],
        input=stdin,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=120,
        env=_environment() | (env or {}),
        check=False,
    )
    run = Run(list(args), result.returncode, result.stdout, result.stderr)
    assert_no_card_data(run.stdout + run.stderr, *card_data(args, stdin))
    return run


class CliProcess:
    """``tolem …`` running in the background, its output read line by line as it comes."""

    def __init__(self, *args: str) -> None:
        self.args = list(args)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tolem", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            env=_environment(),
        )
        assert self.process.stdout is not None and self.process.stderr is not None
        self.lines: dict[str, queue.Queue[str]] = {"stdout": queue.Queue(), "stderr": queue.Queue()}
        self.text: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self.readers = [
            threading.Thread(target=self._read, args=(name, stream), daemon=True)
            for name, stream in (("stdout", self.process.stdout), ("stderr", self.process.stderr))
        ]
        for reader in self.readers:
            reader.start()

    def _read(self, name: str, stream: IO[str]) -> None:
        for line in stream:
            self.text[name].append(line)
            self.lines[name].put(line)

    def wait_for(self, pattern: re.Pattern[str], stream: str) -> re.Match[str]:
        """The first line of ``stream`` that matches, within the deadline."""
        deadline = time.monotonic() + DEADLINE
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines[stream].get(timeout=left)
            except queue.Empty:
                break
            if match := pattern.search(line):
                return match
        raise AssertionError(f"no line matching {pattern.pattern!r}; so far:\n{self.text}")

    def finish(self) -> Run:
        returncode = self.process.wait(timeout=DEADLINE)
        for reader in self.readers:
            reader.join(timeout=DEADLINE)
        run = Run(self.args, returncode, "".join(self.text["stdout"]), "".join(self.text["stderr"]))
        assert_no_card_data(run.stdout + run.stderr, *card_data(self.args))
        return run

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for reader in self.readers:
            reader.join(timeout=DEADLINE)
        assert self.process.stdout is not None and self.process.stderr is not None
        self.process.stdout.close()
        self.process.stderr.close()


@contextmanager
def running(*args: str) -> Iterator[CliProcess]:
    process = CliProcess(*args)
    try:
        yield process
    finally:
        process.close()


def pay_args(
    gw: Gateway, card: tuple[str, str, str], *extra: str, amount: str = "100"
) -> list[str]:
    pan, exp, cvc = card
    return ["pay", "--url", gw.base_url, "--amount", amount, "--card", pan, "--exp", exp,
            "--cvc", cvc, *extra]  # fmt: skip


def pay_json(gw: Gateway, *extra: str, amount: str = "100") -> Payment:
    run = cli(*pay_args(gw, VISA, "--json", *extra, amount=amount))
    assert run.returncode == 0, run
    return Payment.model_validate(run.json())


def status_json(gw: Gateway, invoice: str) -> Transaction:
    run = cli("status", invoice, "--url", gw.base_url, "--json")
    assert run.returncode == 0, run
    return Transaction.model_validate(run.json())


# --- the card-data check itself -----------------------------------------------------


def test_the_card_data_check_catches_a_printed_number_or_cvc() -> None:
    pans, cvcs = card_data(["pay", "--card", "4405 6397 0401 5096", "--cvc", "815"], "")
    assert_no_card_data("440563...5096, reference 638152815093, 21:20.815053", pans, cvcs)
    for leak in (
        "card 4405639704015096",
        "card 4405 6397 0401 5096",
        '{"cvc": "815"}',
        "CVC 815 was wrong",
        "paReq: +815/",
    ):
        with pytest.raises(AssertionError):
            assert_no_card_data(leak, pans, cvcs)
    typed = card_data([], "4405 6397 0401 5096\n0123\n")
    assert typed == (["4405 6397 0401 5096"], ["0123"])
    for leak in ("you typed 0123", "card 4405639704015096"):
        with pytest.raises(AssertionError):
            assert_no_card_data(leak, *typed)
    assert card_data(["--card", "x"], "0123\n") == (["x"], ["0123"])


# --- pay ----------------------------------------------------------------------------


def test_pay_approves_and_prints_a_table(gateway: Gateway) -> None:
    invoice = new_invoice()
    run = cli(*pay_args(gateway, VISA, "--invoice", invoice))
    assert run.returncode == 0, run
    assert run.stderr == ""
    assert "Payment approved" in run.stdout
    for text in (invoice, "AUTH", "100 KZT", "440563...5096 (VISA)"):
        assert text in run.stdout, text
    tx = status_json(gateway, invoice)
    assert tx.id in run.stdout and tx.reference in run.stdout and tx.approval_code in run.stdout
    assert (tx.status, tx.amount, tx.currency) == ("AUTH", 100, "KZT")
    # the defaults: cardholder name, description, language
    assert (tx.name, tx.description, tx.language) == ("CARDHOLDER", "tolem CLI payment", "rus")


def test_pay_json_prints_one_payment_object(gateway: Gateway) -> None:
    invoice = new_invoice()
    run = cli(
        *pay_args(gateway, VISA, "--json", "--invoice", invoice, "--card-save", amount="99.95"),
        "--account-id", "cli-customer-1", "--email", "a@example.kz", "--phone", "77001234567",
        "--name", "ARMAN ALI", "--description", "two coffees", "--language", "eng",
    )  # fmt: skip
    assert run.returncode == 0, run
    assert run.stderr == ""
    body = run.json()
    payment = Payment.model_validate(body)
    assert body["status"] == "AUTH" and body["cardMask"] == "440563...5096"
    assert UUID.fullmatch(payment.id) and UUID.fullmatch(payment.card_id)
    assert (payment.invoice_id, payment.amount, payment.currency) == (
        invoice,
        Decimal("99.95"),
        "KZT",
    )
    assert payment.secure3d is None and len(payment.reference) == 12
    tx = status_json(gateway, invoice)
    assert (tx.id, tx.account_id, tx.email, tx.phone) == (
        payment.id, "cli-customer-1", "a@example.kz", "77001234567",
    )  # fmt: skip
    assert (tx.name, tx.description, tx.language, tx.card_id) == (
        "ARMAN ALI", "two coffees", "eng", payment.card_id,
    )  # fmt: skip


def test_a_decline_exits_1_with_the_code_in_english_and_russian(gateway: Gateway) -> None:
    invoice = new_invoice()
    run = cli(*pay_args(gateway, DECLINED_484, "--invoice", invoice))
    assert run.returncode == 1, run
    assert run.stdout == ""
    assert f"Payment declined, code 484: Insufficient funds — {INSUFFICIENT_FUNDS_RU}" in run.stderr
    tx = status_json(gateway, invoice)
    assert tx.reason_code == 484 and f"transaction {tx.id}" in run.stderr

    invoice = new_invoice()
    run = cli(*pay_args(gateway, DECLINED_484, "--invoice", invoice, "--json"))
    assert run.returncode == 1, run
    assert run.json() == {
        "error": "InsufficientFunds",
        "code": 484,
        "message": "Insufficient funds",
        "message_ru": INSUFFICIENT_FUNDS_RU,
        "status_code": 400,
        "id": status_json(gateway, invoice).id,
        "invoice_id": invoice,
        "outcome_unknown": False,
    }


def test_the_card_and_cvc_can_come_on_standard_input(gateway: Gateway) -> None:
    """Neither on the command line, where ps and shell history would show them."""
    pan, exp, _ = VISA
    base = ["pay", "--url", gateway.base_url, "--amount", "100", "--exp", exp, "--json"]
    both = cli(*base, stdin=f"{pan}\n815\n")
    assert both.returncode == 0, both
    assert both.json()["status"] == "AUTH" and both.json()["cardMask"] == "440563...5096"
    dashes = cli(*base, "--cvc", "815", stdin="4405-6397-0401-5096\n")
    assert dashes.returncode == 0, dashes
    # the CVC read is the one used: a wrong one declines (456, as the sandbox does)
    cvc_only = [*base, "--card", pan]
    assert cli(*cvc_only, stdin="815\n").json()["status"] == "AUTH"
    wrong = cli(*cvc_only, stdin="123\n")
    assert wrong.returncode == 1, wrong
    assert wrong.json()["code"] == 456
    for stdin, says in ((f"{pan}\n", "no CVC given"), ("", "no card number given")):
        nothing = cli(*base, stdin=stdin)
        assert nothing.returncode == 2, nothing
        assert nothing.stdout == "" and says in nothing.stderr


def _read_until(fd: int, text: bytes, deadline: float) -> bytes:
    """What the terminal shows, up to and including ``text``."""
    seen = b""
    while text not in seen:
        left = deadline - time.monotonic()
        assert left > 0 and select.select([fd], [], [], left)[0], f"no {text!r}: {seen!r}"
        seen += os.read(fd, 4096)
    return seen


def test_the_card_and_cvc_prompts_on_a_terminal_hide_what_is_typed(gateway: Gateway) -> None:
    pan, exp, cvc = VISA
    master, terminal = pty.openpty()
    try:
        # A session of its own: no controlling terminal, so the prompts use the pty.
        process = subprocess.Popen(
            [sys.executable, "-m", "tolem", "pay", "--url", gateway.base_url, "--amount", "100",
             "--exp", exp, "--json"],
            stdin=terminal, stdout=subprocess.PIPE, stderr=terminal, start_new_session=True,
            env=_environment(),
        )  # fmt: skip
        deadline = time.monotonic() + DEADLINE
        # Each prompt is written once echo is off: typing after it is never shown.
        screen = _read_until(master, b"Card number: ", deadline)
        assert not termios.tcgetattr(terminal)[3] & termios.ECHO
        os.write(master, f"{pan}\n".encode())
        screen += _read_until(master, b"CVC: ", deadline)
        os.write(master, f"{cvc}\n".encode())
        stdout, _ = process.communicate(timeout=DEADLINE)
        while select.select([master], [], [], 0)[0]:
            screen += os.read(master, 4096)
    finally:
        os.close(master)
        os.close(terminal)
    assert process.returncode == 0, screen
    assert screen.decode().startswith("Card number: ")
    assert_no_card_data(screen.decode() + stdout.decode(), [pan], [cvc])
    assert json.loads(stdout)["status"] == "AUTH"


# --- usage errors -------------------------------------------------------------------

_PAN, _EXP, _CVC = VISA


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--amount", "-5"], "must not be negative"),
        (["--amount", "1.234"], "at most two decimals"),
        (["--amount", "0.1e2"], "at most two decimals"),
        (["--amount", "NaN"], "at most two decimals"),
        (["--amount", "12,50"], "at most two decimals"),
        (["--amount", "0"], "greater than 0"),
        (["--card", "4405 6397 0401 509x"], "12 to 19 digits"),
        (["--card", "44056397"], "12 to 19 digits"),
        (["--exp", "13/25"], "a month 01-12"),
        (["--exp", "01-25"], "a month 01-12"),
        (["--cvc", "81"], "3 or 4 digits"),
        (["--cvc", "8155x"], "3 or 4 digits"),
        (["--invoice", "INV-1"], "6 to 15 digits"),
        (["--currency", "tenge"], "three-letter"),
        (["--env", "test"], "not together with --env"),
        ([_PAN], "not shown as they may hold card data"),
    ],
    ids=[
        "negative",
        "3 decimals",
        "exponent",
        "NaN",
        "comma",
        "zero",
        "letter in PAN",
        "short PAN",
        "month 13",
        "dash in expiry",
        "short CVC",
        "letter in CVC",
        "letters in invoice",
        "currency",
        "url and env",
        "PAN as an argument",
    ],
)
def test_usage_errors_exit_2_and_never_echo_card_data(args: list[str], says: str) -> None:
    options = {"--amount": "100", "--card": _PAN, "--exp": _EXP, "--cvc": _CVC}
    positional = []
    for i in range(0, len(args), 2):
        if args[i].startswith("--"):
            options[args[i]] = args[i + 1]
        else:
            positional = args[i:]
            break
    # Nothing listens there: a run that went on to pay would exit 1, not 2.
    url = f"http://127.0.0.1:{free_port()}"
    flat = [item for pair in options.items() for item in pair]
    run = cli("pay", *positional, *flat, "--url", url, "--json")
    assert run.returncode == 2, run
    assert run.stdout == ""  # no JSON for a usage error
    assert says in " ".join(run.stderr.split()), run


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["status", "123456789012", "--env", _PAN], "must be one of test, production"),
        (["pay", "--amount", "1", "--exp", _EXP, "--cvc", _CVC, "--language", _PAN], "rus, kaz"),
        (["pay", "--amount", "1", "--card", _PAN, "--exp", _EXP, "--language", _CVC], "rus, kaz"),
        (["status", "123456789012", _PAN], "1 unexpected argument(s), not shown"),
        (["charge", UUID_ZERO, _PAN], "1 unexpected argument(s), not shown"),
        (["cancel", UUID_ZERO, _PAN, _CVC], "2 unexpected argument(s), not shown"),
        (["refund", UUID_ZERO, "--amount", "1", _PAN], "1 unexpected argument(s), not shown"),
    ],
    ids=["env", "language PAN", "language CVC", "status", "charge", "cancel", "refund"],
)
def test_a_bad_choice_or_an_extra_argument_is_not_echoed(args: list[str], says: str) -> None:
    """Click would repeat them ("'4405…' is not one of 'test', 'production'")."""
    url = ["--url", f"http://127.0.0.1:{free_port()}"] if "--env" not in args else []
    run = cli(*args, *url, "--json")
    assert run.returncode == 2, run
    assert run.stdout == ""
    assert says in " ".join(run.stderr.split()), run
    assert_no_card_data(run.stderr, [_PAN], [_CVC])


def test_the_help_states_the_json_contract_and_where_card_data_may_be_seen() -> None:
    run = cli("pay", "--help")
    assert run.returncode == 0, run
    text = " ".join(run.stdout.replace("│", " ").split())
    for said in (
        "the result (exit status 0 or 3) or the error (1). Usage errors (2) and Ctrl-C (130) "
        "print none.",
        "test, or production (which requires --client-id, --client-secret and --terminal)",
        "a command line is visible to other local users (ps) and lands in shell history",
    ):
        assert said in text, said


def test_production_needs_real_credentials() -> None:
    run = cli("status", "123456789012", "--env", "production", "--json")
    assert run.returncode == 2, run
    assert "--client-id" in run.stderr and run.stdout == ""


def test_connection_options_come_from_the_environment(gateway: Gateway) -> None:
    invoice = new_invoice()
    pay_json(gateway, "--invoice", invoice)
    env = {
        "TOLEM_URL": gateway.base_url,
        "TOLEM_CLIENT_ID": CLIENT_ID,
        "TOLEM_CLIENT_SECRET": CLIENT_SECRET,
        "TOLEM_TERMINAL_ID": TERMINAL,
    }
    found = cli("status", invoice, "--json", env=env)
    assert found.returncode == 0, found
    assert found.json()["statusName"] == "AUTH"
    refused = cli("status", invoice, "--json", env=env | {"TOLEM_CLIENT_SECRET": "wrong"})
    assert refused.returncode == 1, refused
    assert refused.json()["error"] == "AuthenticationError"
    # --url on the command line beats TOLEM_URL
    elsewhere = cli(
        "status", invoice, "--url", gateway.base_url, env={"TOLEM_URL": "http://x.invalid"}
    )
    assert elsewhere.returncode == 0, elsewhere


# --- status, charge, cancel, refund -------------------------------------------------


def test_status_prints_the_transaction(gateway: Gateway) -> None:
    invoice = new_invoice()
    payment = pay_json(gateway, "--invoice", invoice)
    run = cli("status", invoice, "--url", gateway.base_url)
    assert run.returncode == 0, run
    for text in (f"Invoice {invoice}", payment.id, "AUTH", "100 KZT", "success (0)",
                 "440563...5096 (VISA)", payment.reference, payment.approval_code):  # fmt: skip
        assert text in run.stdout, text
    tx = status_json(gateway, invoice)
    assert (tx.id, tx.status, tx.reason, tx.reason_code) == (payment.id, "AUTH", "success", 0)
    assert tx.card_mask == "440563...5096" and tx.created_date


def test_status_of_an_unknown_invoice_is_not_found(gateway: Gateway) -> None:
    unknown = new_invoice()
    run = cli("status", unknown, "--url", gateway.base_url)
    assert run.returncode == 1, run
    assert f"NotFound, code 102: Invoice not found — {NOT_FOUND_RU}" in run.stderr
    run = cli("status", unknown, "--url", gateway.base_url, "--json")
    assert run.returncode == 1, run
    assert run.json() == {
        "error": "NotFound",
        "code": 102,
        "message": "Invoice not found",
        "message_ru": NOT_FOUND_RU,
        "status_code": 400,
        "id": None,
        "invoice_id": unknown,
        "outcome_unknown": False,
    }


def test_charge_and_refund_in_part(gateway: Gateway) -> None:
    invoice = new_invoice()
    payment = pay_json(gateway, "--invoice", invoice)
    url = ["--url", gateway.base_url]

    charged = cli("charge", payment.id, "--amount", "60", *url)
    assert charged.returncode == 0, charged
    assert "Charge done" in charged.stdout and "CHARGE" in charged.stdout
    tx = status_json(gateway, invoice)
    assert (tx.status, tx.payout_amount) == ("CHARGE", 60)

    refunded = cli(
        "refund", payment.id, "--amount", "20.50", "--external-id", "ret-1", *url, "--json"
    )
    assert refunded.returncode == 0, refunded
    body = refunded.json()
    assert body["id"] == payment.id and body["code"] == 0
    assert (body["amount"], body["amountCharged"], body["amountRefunded"]) == ("20.5", "60", "20.5")

    too_much = cli("refund", payment.id, "--amount", "100", *url, "--json")
    assert too_much.returncode == 1, too_much
    error = too_much.json()
    assert (error["error"], error["code"], error["id"]) == ("ApiError", 100, payment.id)
    assert "exceed" in error["message"] and error["message_ru"] == "Запрос отклонён"
    assert status_json(gateway, invoice).payout_amount == Decimal("39.5")

    table = cli("refund", payment.id, "--amount", "100", *url)
    assert table.returncode == 1 and table.stdout == ""
    assert "ApiError, code 100:" in table.stderr and "Запрос отклонён" in table.stderr


def test_cancel_releases_an_authorization(gateway: Gateway) -> None:
    invoice = new_invoice()
    payment = pay_json(gateway, "--invoice", invoice)
    run = cli("cancel", payment.id, "--url", gateway.base_url)
    assert run.returncode == 0, run
    assert "Cancel done" in run.stdout and payment.id in run.stdout
    assert status_json(gateway, invoice).status == "CANCEL"
    again = cli("cancel", payment.id, "--url", gateway.base_url, "--json")
    assert again.returncode == 1, again
    assert again.json()["code"] == 100
    charge = cli("charge", payment.id, "--url", gateway.base_url, "--json")
    assert charge.returncode == 1 and charge.json()["error"] == "ApiError"


def test_an_operation_on_an_unknown_transaction_fails(gateway: Gateway) -> None:
    unknown = UUID_ZERO
    run = cli("charge", unknown, "--url", gateway.base_url, "--json")
    assert run.returncode == 1, run
    assert run.json()["id"] == unknown and run.json()["status_code"] in (400, 404)


def test_no_gateway_is_a_connection_error() -> None:
    run = cli("status", "123456789012", "--url", f"http://127.0.0.1:{free_port()}", "--json")
    assert run.returncode == 1, run
    assert run.json()["error"] == "EpayConnectionError"


# --- 3-D Secure ---------------------------------------------------------------------


def _browser_page(response: httpx.Response, card: tuple[str, str, str]) -> str:
    """A page the CLI's server (or the ACS) showed the browser: never the card data."""
    pan, _, cvc = card
    assert_no_card_data(response.text, [pan], [cvc])
    return response.text


def _pass_acs(
    browser: httpx.Client, open_url: str, acs: str, card: tuple[str, str, str]
) -> tuple[str, str, str]:
    """What the cardholder's browser does: open the CLI's page, follow its form to the
    ACS, enter the code; the TermUrl the ACS posts to, with its PaRes and MD."""
    page = browser.get(open_url)
    assert page.status_code == 200, page.text
    text = _browser_page(page, card)
    assert f'action="{acs}"' in text
    form = {name: hidden(text, name) for name in ("PaReq", "MD", "TermUrl")}
    assert form["TermUrl"] == f"{open_url}term"
    challenge = browser.post(acs, data=form)
    assert challenge.status_code == 200, challenge.text
    answered = browser.post(
        urljoin(acs, "/acs/pa/answer"),
        data=form | {"action": "confirm", "code": otp(challenge.text)},
    )
    assert f'action="{form["TermUrl"]}"' in answered.text, answered.text
    return form["TermUrl"], hidden(answered.text, "PaRes"), hidden(answered.text, "MD")


def _waiting(process: CliProcess, notes: str = "stderr") -> tuple[str, str]:
    """The ACS address and the page to open, as the CLI prints them."""
    acs = process.wait_for(re.compile(r"the issuer's ACS is (\S+)"), notes).group(1)
    return acs, process.wait_for(OPEN_LINE, notes).group(1)


def test_3ds_pay_waits_for_the_browser_and_prints_the_result(gateway: Gateway) -> None:
    invoice = new_invoice()
    args = pay_args(gateway, VISA_3DS, "--json", "--invoice", invoice, "--wait-timeout", "120",
                    "--card-save", "--account-id", "cli-3ds-customer")  # fmt: skip
    with running(*args) as process, httpx.Client(timeout=30) as browser:
        acs, open_url = _waiting(process)
        assert acs == f"{gateway.base_url}/acs/pa"
        # only 127.0.0.1, only this payment's answer, only from the ACS's page
        misdirected = browser.get(open_url, headers={"Host": "evil.example"})
        assert misdirected.status_code == 421
        assert browser.get(f"{open_url}other").status_code == 404
        term_url, pa_res, md = _pass_acs(browser, open_url, acs, VISA_3DS)
        answer = {"PaRes": pa_res, "MD": md}
        elsewhere = f"http://127.0.0.1:{free_port()}"  # another page on this machine
        for refused, status_code in (
            (browser.post(term_url, data={"PaRes": pa_res, "MD": "123-ABC"}), 400),
            (browser.post(term_url, data=answer, headers={"Origin": "http://evil.example"}), 403),
            (browser.post(term_url, data=answer, headers={"Origin": elsewhere}), 403),
        ):
            assert refused.status_code == status_code, refused.text
            _browser_page(refused, VISA_3DS)
        assert process.process.poll() is None  # still waiting
        done = browser.post(term_url, data=answer, headers={"Origin": gateway.base_url})
        assert done.status_code == 200 and "Payment approved" in _browser_page(done, VISA_3DS)
        assert "status AUTH" in done.text
        run = process.finish()
    assert run.returncode == 0, run
    payment = Payment.model_validate(run.json())
    assert (payment.status, payment.invoice_id, payment.amount) == ("AUTH", invoice, 100)
    assert payment.secure3d is None and payment.card_mask.endswith(VISA_3DS[0][-4:])
    assert len(payment.reference) == 12 and payment.approval_code
    tx = status_json(gateway, invoice)
    assert (tx.id, tx.status, tx.secure) == (payment.id, "AUTH", True)
    assert UUID.fullmatch(payment.card_id) and payment.card_id == tx.card_id
    # the status API's details, as a payment without 3-D Secure has them from cryptopay
    assert payment.card_type == tx.card_type == "VISA"
    assert (payment.issuer, payment.int_reference) == (tx.issuer, tx.int_reference)
    assert payment.int_reference


def test_3ds_a_refused_answer_leaves_the_payment_waiting_for_a_good_one(gateway: Gateway) -> None:
    """A PaRes the gateway refuses (473, "PaRes refused") leaves the transaction NEW:
    not a decline. The browser is told to try again; the right PaRes then approves."""
    invoice = new_invoice()
    args = pay_args(gateway, VISA_3DS, "--invoice", invoice, "--json", "--wait-timeout", "120")
    with running(*args) as process, httpx.Client(timeout=30) as browser:
        acs, open_url = _waiting(process)
        term_url, pa_res, md = _pass_acs(browser, open_url, acs, VISA_3DS)
        garbage = browser.post(term_url, data={"PaRes": "bm90IGEgUGFSZXM=", "MD": md})
        assert garbage.status_code == 200
        page = _browser_page(garbage, VISA_3DS)
        assert "Not confirmed 473" in page and "PaRes refused" in page
        assert '<a href="/">Try 3-D Secure again</a>' in page
        assert "declined" not in page.lower()
        assert status_json(gateway, invoice).status == "NEW"
        assert process.process.poll() is None  # still waiting
        # the page at / offers the ACS again
        assert f'action="{acs}"' in _browser_page(browser.get(open_url), VISA_3DS)
        done = browser.post(term_url, data={"PaRes": pa_res, "MD": md})
        assert "Payment approved" in _browser_page(done, VISA_3DS)
        run = process.finish()
    assert run.returncode == 0, run
    assert run.json()["status"] == "AUTH"
    assert status_json(gateway, invoice).status == "AUTH"


def test_3ds_an_unknown_outcome_is_settled_by_the_status(gateway: Gateway) -> None:
    """A confirm without a usable answer is not a decline: while the payment is NEW the
    browser hears "outcome unknown" and the wait goes on; once the gateway has approved
    it (the answer lost after the fact), the status API says so and the command ends 0."""
    invoice = new_invoice()
    with running_proxy(gateway.base_url) as proxy:
        args = ["pay", "--url", proxy.base_url, "--amount", "100", "--card", VISA_3DS[0],
                "--exp", VISA_3DS[1], "--cvc", VISA_3DS[2], "--invoice", invoice, "--json",
                "--wait-timeout", "120"]  # fmt: skip
        with running(*args) as process, httpx.Client(timeout=30) as browser:
            acs, open_url = _waiting(process)
            term_url, pa_res, md = _pass_acs(browser, open_url, acs, VISA_3DS)
            proxy.fail("/payment/confirm", 503)  # never reaches the gateway
            unknown = browser.post(term_url, data={"PaRes": pa_res, "MD": md})
            page = _browser_page(unknown, VISA_3DS)
            assert "<h1>Outcome unknown</h1>" in page and "still waiting" in page
            assert "declined" not in page.lower()
            assert process.process.poll() is None
            proxy.fail("/payment/confirm", FORWARD_THEN_504)  # approved, the answer lost
            done = browser.post(term_url, data={"PaRes": pa_res, "MD": md})
            assert "Payment approved" in _browser_page(done, VISA_3DS)
            run = process.finish()
        confirms = proxy.seen("/payment/confirm")
    assert [(s.action, s.upstream_status) for s in confirms] == [
        (503, None),
        (FORWARD_THEN_504, 200),
    ]
    assert run.returncode == 0, run
    payment = Payment.model_validate(run.json())
    tx = status_json(gateway, invoice)
    assert (payment.id, payment.status, payment.reference) == (tx.id, "AUTH", tx.reference)
    assert payment.card_type == "VISA" and payment.secure3d is None


@pytest.mark.parametrize("as_json", [True, False], ids=["json", "table"])
def test_3ds_declined_after_the_challenge(gateway: Gateway, as_json: bool) -> None:
    invoice = new_invoice()
    extra = ["--json"] if as_json else []
    args = pay_args(gateway, VISA_3DS_THEN_484, "--invoice", invoice, "--language", "ENG", *extra)
    with running(*args) as process, httpx.Client(timeout=30) as browser:
        acs, open_url = _waiting(process, "stderr" if as_json else "stdout")
        assert '<html lang="en">' in browser.get(open_url).text
        term_url, pa_res, md = _pass_acs(browser, open_url, acs, VISA_3DS_THEN_484)
        done = browser.post(term_url, data={"PaRes": pa_res, "MD": md}, headers={"Origin": "null"})
        assert done.status_code == 200
        page = _browser_page(done, VISA_3DS_THEN_484)
        assert "Payment declined 484" in page and "Insufficient funds" in page
        assert "Try 3-D Secure again" not in page
        run = process.finish()
    assert run.returncode == 1, run
    tx = status_json(gateway, invoice)
    assert (tx.reason_code, tx.status) == (484, "FAILED")
    if as_json:
        assert run.json() == {
            "error": "InsufficientFunds",
            "code": 484,
            "message": "Insufficient funds",
            "message_ru": INSUFFICIENT_FUNDS_RU,
            "status_code": 200,
            "id": tx.id,
            "invoice_id": invoice,
            "outcome_unknown": False,
        }
    else:
        assert (
            f"Payment declined, code 484: Insufficient funds — {INSUFFICIENT_FUNDS_RU}"
            in run.stderr
        )
        assert "Payment approved" not in run.stdout


def test_3ds_no_wait_prints_the_payment_and_exits_3(gateway: Gateway) -> None:
    invoice = new_invoice()
    run = cli(*pay_args(gateway, VISA_3DS, "--invoice", invoice, "--no-wait", "--json"))
    assert run.returncode == 3, run
    assert run.stderr == ""
    body = run.json()  # the payment as cryptopay answered it, under ePay's names
    payment = Payment.model_validate(body)
    assert body["invoiceID"] == invoice and UUID.fullmatch(body["id"])
    assert set(body["secure3D"]) == {"paReq", "md", "action"}
    assert payment.secure3d is not None and payment.amount == 100
    assert payment.secure3d.action == f"{gateway.base_url}/acs/pa"
    # what it printed is enough for a shop to finish the payment itself
    with httpx.Client(timeout=30) as browser:
        form = {"PaReq": payment.secure3d.pa_req, "MD": payment.secure3d.md, "TermUrl": TERM_URL}
        challenge = browser.post(payment.secure3d.action, data=form)
        answered = browser.post(
            urljoin(payment.secure3d.action, "/acs/pa/answer"),
            data=form | {"action": "confirm", "code": otp(challenge.text)},
        )
    with EpayClient(
        gateway.base_url, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, terminal_id=TERMINAL
    ) as client:
        result = client.confirm(
            payment.id, hidden(answered.text, "PaRes"), hidden(answered.text, "MD")
        )
    assert result.status == "AUTH"

    table = cli(*pay_args(gateway, VISA_3DS, "--no-wait"))
    assert table.returncode == 3, table
    assert "Waiting for 3-D Secure" in table.stdout
    for text in ("Transaction", "Invoice", "100 KZT", "ACS", f"{gateway.base_url}/acs/pa", "PaReq"):
        assert text in table.stdout, text
    assert UUID.search(table.stdout)


def test_3ds_gives_up_after_the_wait_timeout(gateway: Gateway) -> None:
    invoice = new_invoice()
    args = pay_args(gateway, VISA_3DS, "--invoice", invoice, "--json", "--wait-timeout", "1")
    with running(*args) as process:
        process.wait_for(OPEN_LINE, "stderr")
        run = process.finish()
    assert run.returncode == 1, run
    body = run.json()
    assert body["error"] == "Secure3DTimeout" and "not passed in 1 s" in body["message"]
    assert (body["id"], body["invoice_id"]) == (status_json(gateway, invoice).id, invoice)


def test_ctrl_c_while_waiting_exits_130_without_json(gateway: Gateway) -> None:
    with running(*pay_args(gateway, VISA_3DS, "--json")) as process:
        process.wait_for(OPEN_LINE, "stderr")
        process.process.send_signal(signal.SIGINT)
        run = process.finish()
    assert run.returncode == 130, run
    assert run.stdout == ""


def test_a_taken_listen_port_fails_before_paying(gateway: Gateway) -> None:
    """The port is opened first: a port in use pays nothing (no 3-D Secure payment
    left pending); with --no-wait no port is needed."""
    invoice = new_invoice()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        run = cli(*pay_args(gateway, VISA_3DS, "--invoice", invoice, "--listen-port", port,
                            "--json"))  # fmt: skip
        assert run.returncode == 1, run
        body = run.json()
        assert body["error"] == "ListenError" and f"127.0.0.1:{port}" in body["message"]
        assert "nothing was paid" in body["message"] and body["id"] is None
        unknown = cli("status", invoice, "--url", gateway.base_url, "--json")
        assert unknown.returncode == 1 and unknown.json()["error"] == "NotFound"
        no_wait = cli(*pay_args(gateway, VISA_3DS, "--invoice", invoice, "--listen-port", port,
                                "--no-wait", "--json"))  # fmt: skip
        assert no_wait.returncode == 3, no_wait
