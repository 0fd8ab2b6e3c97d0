"""``tolem pay``, ``status``, ``charge``, ``cancel`` and ``refund``: the SDK from a shell.

Each command speaks ePay's merchant protocol through :mod:`tolem.client`, to a tolem
gateway (``--url``) or to ePay's own hosts (``--env test|production``).

Exit statuses: 0 done (the payment approved, the operation done), 1 refused (declined,
an error of the gateway, no answer, 3-D Secure not finished in time), 2 a usage error,
3 waiting for 3-D Secure (``pay --no-wait``), 130 interrupted. With ``--json``, exit
statuses 0, 1 and 3 print exactly one JSON object on standard output; 2 and 130 none.

The card number and the CVC are never printed or logged: only the card's mask is.
"""

from __future__ import annotations

import functools
import getpass
import html
import json
import re
import secrets
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Annotated, Any, Literal, NoReturn
from urllib.parse import parse_qs, urlsplit

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from rich.text import Text

from tolem.cli import app, console
from tolem.client import (
    PRODUCTION,
    TEST,
    Card,
    CardDataError,
    ConfirmResult,
    Environment,
    EpayClient,
    EpayError,
    OperationResult,
    Payment,
    PaymentDeclined,
    PaymentRequest,
    Transaction,
    error_for,
    secure3d_form,
)
from tolem.testing import SANDBOX_MERCHANT  # ePay's public sandbox merchant

#: The payment is waiting for 3-D Secure (``tolem pay --no-wait``).
EXIT_PENDING_3DS = 3
EXIT_FAILED = 1

#: Where ``tolem serve`` (and ``./dev serve``) listens by default.
DEFAULT_URL = "http://127.0.0.1:8000"

#: Statuses of a payment that went through (EPAY.md section 11).
APPROVED = frozenset({"AUTH", "CHARGE", "VERIFIED"})

err_console = Console(stderr=True)


def _one_of(*allowed: str) -> Callable[[str | None], str | None]:
    """An option's check that lists the choices but never repeats the value given: a
    card number or a CVC typed in the wrong place must not be echoed."""

    def check(value: str | None) -> str | None:
        if value is None or value.lower() in allowed:
            return value and value.lower()
        raise typer.BadParameter(f"must be one of {', '.join(allowed)} (the value is not shown)")

    return check


# --- the options every command shares -----------------------------------------------

_PANEL = "Connection"
Url = Annotated[
    str,
    typer.Option(
        "--url", envvar="TOLEM_URL", help="Base URL of a tolem gateway.", rich_help_panel=_PANEL
    ),
]
Env = Annotated[
    str | None,
    typer.Option(
        "--env",
        metavar="test|production",
        callback=_one_of("test", "production"),
        help="Talk to ePay's own hosts instead of a tolem gateway: test, or production "
        "(which requires --client-id, --client-secret and --terminal). Not together "
        "with --url.",
        rich_help_panel=_PANEL,
    ),
]
ClientId = Annotated[
    str,
    typer.Option(
        "--client-id",
        envvar="TOLEM_CLIENT_ID",
        help="ClientID (default: the sandbox merchant's).",
        show_default=False,
        rich_help_panel=_PANEL,
    ),
]
ClientSecret = Annotated[
    str,
    typer.Option(
        "--client-secret",
        envvar="TOLEM_CLIENT_SECRET",
        help="ClientSecret (default: the sandbox merchant's). Prefer the environment "
        "variable: a command line lands in shell history.",
        show_default=False,
        rich_help_panel=_PANEL,
    ),
]
TerminalId = Annotated[
    str,
    typer.Option(
        "--terminal",
        envvar="TOLEM_TERMINAL_ID",
        help="TerminalID (default: the sandbox terminal).",
        show_default=False,
        rich_help_panel=_PANEL,
    ),
]
Timeout = Annotated[
    float,
    typer.Option(
        "--timeout", min=0.1, help="Seconds to wait for each HTTP answer.", rich_help_panel=_PANEL
    ),
]
AsJson = Annotated[
    bool,
    typer.Option(
        "--json",
        help="Print one JSON object on standard output, for scripts: the result (exit "
        "status 0 or 3) or the error (1). Usage errors (2) and Ctrl-C (130) print none.",
        rich_help_panel=_PANEL,
    ),
]
_SANDBOX = SANDBOX_MERCHANT
#: Extra arguments are refused by Connection.from_options, which does not echo them
#: (they may be a card number); Click's own refusal would.
_COMMAND: dict[str, Any] = {"context_settings": {"allow_extra_args": True}}


@dataclass(frozen=True)
class Connection:
    """Where to send the calls, as whom, and how to print the answer (``--json``)."""

    environment: Environment
    client_id: str
    client_secret: str = field(repr=False)
    terminal_id: str
    timeout: float
    as_json: bool

    @classmethod
    def from_options(cls, ctx: typer.Context) -> Connection:
        """The connection options of the command (``--url`` … ``--json``), checked."""
        if ctx.args:
            raise typer.BadParameter(
                f"{len(ctx.args)} unexpected argument(s), not shown as they may hold card data"
            )
        options = ctx.params

        def given(name: str) -> bool:  # on the command line or in the environment
            source = ctx.get_parameter_source(name)
            return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")

        if options["env"] is None:
            parts = urlsplit(options["url"])
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise typer.BadParameter("must be an http or https URL", param_hint="--url")
            environment = Environment.tolem(options["url"])
        else:
            source = ctx.get_parameter_source("url")
            if source is not None and source.name == "COMMANDLINE":
                raise typer.BadParameter(
                    "not together with --env: --url names a tolem gateway, --env ePay's own hosts",
                    param_hint="--url",
                )
            credentials = ("client_id", "client_secret", "terminal")
            if options["env"] == "production" and not all(map(given, credentials)):
                raise typer.BadParameter(
                    "production needs your merchant's --client-id, --client-secret and "
                    "--terminal (or TOLEM_CLIENT_ID, TOLEM_CLIENT_SECRET, TOLEM_TERMINAL_ID)",
                    param_hint="--env",
                )
            environment = PRODUCTION if options["env"] == "production" else TEST
        return cls(
            environment,
            client_id=options["client_id"],
            client_secret=options["client_secret"],
            terminal_id=options["terminal"],
            timeout=options["timeout"],
            as_json=options["as_json"],
        )

    def client(self) -> EpayClient:
        return EpayClient(
            self.environment,
            client_id=self.client_id,
            client_secret=self.client_secret,
            terminal_id=self.terminal_id,
            timeout=self.timeout,
        )


# --- printing -----------------------------------------------------------------------

Kind = Literal["declined", "unknown", "error"]


@dataclass(frozen=True)
class Failure:
    """What ends a command with exit status 1: an EpayError, or the CLI's own error.

    ``kind``: ``declined`` (the payment was refused), ``unknown`` (a request that moves
    money may have been carried out, but no usable answer came: ask ``tolem status``
    before trying again) or ``error``. ``pending``: 3-D Secure only, the answer was not
    accepted but the payment is not decided yet, so the wait goes on.
    """

    error: str
    message: str
    message_ru: str
    code: int | None = None
    status_code: int | None = None
    id: str = ""
    invoice_id: str = ""
    kind: Kind = "error"
    pending: bool = False

    @classmethod
    def of(cls, exc: EpayError, transaction_id: str = "", invoice_id: str = "") -> Failure:
        kind: Kind = "error"
        if exc.outcome_unknown:
            kind = "unknown"
        elif isinstance(exc, PaymentDeclined):
            kind = "declined"
        return cls(
            error=type(exc).__name__,
            message=exc.message,
            message_ru=exc.message_ru,
            code=exc.code,
            status_code=exc.status_code,
            id=exc.transaction_id or transaction_id,
            invoice_id=exc.invoice_id or invoice_id,
            kind=kind,
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "error": self.error,
            "code": self.code,
            "message": self.message,
            "message_ru": self.message_ru,
            "status_code": self.status_code,
            "id": self.id or None,
            "invoice_id": self.invoice_id or None,
            "outcome_unknown": self.kind == "unknown",
        }


def fail(conn: Connection, failure: Failure) -> NoReturn:
    if conn.as_json:
        _print_json(failure.as_json())
        raise typer.Exit(EXIT_FAILED)
    what = {
        "declined": "Payment declined",
        "unknown": f"Outcome unknown ({failure.error})",
        "error": failure.error,
    }[failure.kind]
    code = f", code {failure.code}" if failure.code is not None else ""
    line = f"{what}{code}: {failure.message} — {failure.message_ru}"
    err_console.print(Text(line, style="bold red"), soft_wrap=True)
    for name, value in (("transaction", failure.id), ("invoice", failure.invoice_id)):
        if value:
            err_console.print(Text(f"{name} {value}", style="dim"), soft_wrap=True)
    if failure.kind == "unknown":
        check = f"tolem status {failure.invoice_id}" if failure.invoice_id else "tolem status"
        err_console.print(Text(f"Check with {check} before trying again.", style="dim"))
    raise typer.Exit(EXIT_FAILED)


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, ensure_ascii=False))


def _note(conn: Connection, line: str) -> None:
    """A progress line: on standard error under --json, so stdout stays one object."""
    typer.echo(line, err=conn.as_json)


def _table(title: str, rows: list[tuple[str, str]], style: str = "green") -> None:
    table = Table(title=Text(title, style=f"bold {style}"), show_header=False, title_justify="left")
    table.add_column(style="dim")
    table.add_column(overflow="fold")
    for name, value in rows:
        if value:
            table.add_row(name, Text(value))
    console.print(table)


def _money(amount: Decimal, currency: str = "") -> str:
    return f"{amount:f} {currency}".strip()


def _card_text(mask: str, card_type: str) -> str:
    return f"{mask} ({card_type})" if mask and card_type else mask


def show_payment(conn: Connection, payment: Payment) -> None:
    if conn.as_json:
        _print_json(payment.model_dump(by_alias=True, mode="json"))
        return
    _table(
        "Payment approved",
        [
            ("Transaction", payment.id),
            ("Invoice", payment.invoice_id),
            ("Status", payment.status),
            ("Amount", _money(payment.amount, payment.currency)),
            ("Reference", payment.reference),
            ("Approval code", payment.approval_code),
            ("Card", _card_text(payment.card_mask, payment.card_type)),
            ("Card ID", payment.card_id),
        ],
    )


def show_pending(conn: Connection, payment: Payment) -> NoReturn:
    """``--no-wait``: what a shop needs to send the cardholder to the ACS; exit 3."""
    secure3d = payment.secure3d
    assert secure3d is not None
    if conn.as_json:
        _print_json(payment.model_dump(by_alias=True, mode="json"))
        raise typer.Exit(EXIT_PENDING_3DS)
    _table(
        "Waiting for 3-D Secure",
        [
            ("Transaction", payment.id),
            ("Invoice", payment.invoice_id),
            ("Amount", _money(payment.amount, payment.currency)),
            ("ACS", secure3d.action),
            ("PaReq", secure3d.pa_req),
            ("MD", secure3d.md),
        ],
        style="yellow",
    )
    console.print(
        Text(
            "Post PaReq, MD and your TermUrl to the ACS, then confirm the ACS's PaRes and "
            "MD with POST /payment/confirm.",
            style="dim",
        ),
        soft_wrap=True,
    )
    raise typer.Exit(EXIT_PENDING_3DS)


def show_transaction(conn: Connection, tx: Transaction) -> None:
    if conn.as_json:
        _print_json(tx.model_dump(by_alias=True, mode="json"))
        return
    reason = f"{tx.reason} ({tx.reason_code})" if tx.reason else str(tx.reason_code)

    def money(amount: Decimal) -> str:
        return _money(amount, tx.currency)

    _table(
        f"Invoice {tx.invoice_id}",
        [
            ("Transaction", tx.id),
            ("Status", tx.status),
            ("Amount", money(tx.amount)),
            ("Original amount", money(tx.org_amount) if tx.org_amount != tx.amount else ""),
            ("Paid out", money(tx.payout_amount) if tx.payout_amount else ""),
            ("Reason", reason),
            ("Card", _card_text(tx.card_mask, tx.card_type)),
            ("Reference", tx.reference),
            ("Approval code", tx.approval_code),
            ("3-D Secure", "yes" if tx.secure else "no"),
            ("Created", tx.created_date),
            ("Card ID", tx.card_id),
            ("Account ID", tx.account_id),
            ("Description", tx.description),
        ],
        style="cyan",
    )


def show_operation(
    conn: Connection, kind: str, transaction_id: str, result: OperationResult
) -> None:
    if conn.as_json:
        _print_json(result.model_dump(by_alias=True, mode="json"))
        return
    answered = bool(result.status)  # ePay itself may answer with an empty body
    _table(
        f"{kind.capitalize()} done",
        [
            ("Transaction", result.id or transaction_id),
            ("Status", result.status),
            ("Amount", _money(result.amount) if answered else ""),
            ("Charged", _money(result.amount_charged) if answered else ""),
            ("Refunded", _money(result.amount_refunded) if answered else ""),
            ("Reference", result.reference),
            ("Operation ID", result.operation_id),
            ("Message", result.message),
        ],
    )


# --- checking what the user typed (never echoing card data) -------------------------

_AMOUNT = re.compile(r"[0-9]{1,15}(\.[0-9]{1,2})?")


def parse_amount(text: str, option: str = "--amount") -> Decimal:
    """A positive amount with at most two decimals, read as a Decimal (never a float)."""
    value = text.strip()
    if value.startswith("-"):
        raise typer.BadParameter("must not be negative", param_hint=option)
    if not _AMOUNT.fullmatch(value):
        raise typer.BadParameter(
            "must be a plain number with at most two decimals, e.g. 100 or 99.95",
            param_hint=option,
        )
    amount = Decimal(value)
    if amount <= 0:
        raise typer.BadParameter("must be greater than 0", param_hint=option)
    return amount


def parse_card(pan: str, exp: str, cvc: str) -> Card:
    """The card (dashes and spaces allowed in the number), or a usage error that names
    the option but never repeats its value."""
    try:
        return Card.parse(pan.replace("-", ""), exp, cvc)
    except CardDataError as exc:  # its message names the rule, never the value
        option = {"pan": "--card", "exp": "--exp", "cvc": "--cvc"}.get(exc.field, "--card")
        rule = str(exc).removeprefix(f"{exc.field}: ")
        raise typer.BadParameter(f"must be {rule}; not shown here", param_hint=option) from None


def read_secret(label: str) -> str:
    """A card number or CVC not given on the command line (where ``ps`` and shell
    history show it): a hidden prompt on a terminal, else the next line of standard
    input (``printf '%s\\n' "$PAN" "$CVC" | tolem pay …``)."""
    if sys.stdin.isatty():
        try:
            return getpass.getpass(f"{label}: ").strip()
        except EOFError:  # Ctrl-D: nothing given (Ctrl-C stays an interruption, 130)
            return ""
    return sys.stdin.readline().strip()


def _random_invoice() -> str:
    return f"{secrets.randbelow(10**12):012d}"


def _required(value: str, what: str) -> str:
    if not value.strip():
        raise typer.BadParameter("must not be empty", param_hint=what)
    return value.strip()


# --- 3-D Secure: deciding the outcome -----------------------------------------------


def _status_of(client: EpayClient, payment: Payment) -> Transaction | None:
    """The payment as the status API has it; None without an answer or if the invoice's
    newest transaction is another one."""
    try:
        tx = client.status(payment.invoice_id)
    except EpayError:
        return None
    return tx if tx.id == payment.id else None


_AFTER_3DS = ("status", "reference", "approval_code", "card_mask", "card_id", "card_type",
              "issuer", "int_reference")  # fmt: skip


def settled(payment: Payment, *answers: ConfirmResult | Transaction | None) -> Payment:
    """The payment as it stands after 3-D Secure: confirm's answer, then the status
    API's transaction (card type, issuer, intReference), each over the one before."""
    update: dict[str, Any] = {"secure3d": None}
    for answer in answers:
        update |= {name: value for name in _AFTER_3DS if (value := getattr(answer, name, ""))}
    return payment.model_copy(update=update)


def decided(client: EpayClient, payment: Payment, failure: Failure) -> Payment | Failure | None:
    """After a confirm that failed: the approved payment or the final failure if the
    gateway has decided the payment, None while it is NEW (another PaRes may pass) or
    the status API does not answer."""
    tx = _status_of(client, payment)
    if tx is None or tx.status == "NEW":
        return None
    if tx.status in APPROVED:
        return settled(payment, tx)
    if failure.kind == "declined":
        return failure
    body = {"code": tx.reason_code or None, "message": tx.reason or f"status {tx.status}"}
    return Failure.of(error_for(200, body), payment.id, payment.invoice_id)


def confirm_3ds(client: EpayClient, payment: Payment, pa_res: str, md: str) -> Payment | Failure:
    """Confirm the ACS's answer: the approved payment, a final failure, or a pending one
    (the answer refused or its outcome unknown, the payment still undecided)."""
    try:
        result = client.confirm(payment, pa_res, md)
    except EpayError as exc:
        failure = Failure.of(exc, payment.id, payment.invoice_id)
        outcome = decided(client, payment, failure)
        return replace(failure, pending=True) if outcome is None else outcome
    except Exception as exc:  # never leave the browser (and the command) hanging
        return Failure(
            type(exc).__name__, str(exc), "Ошибка подтверждения 3-D Secure", id=payment.id
        )
    return settled(payment, result, _status_of(client, payment))


# --- 3-D Secure: a one-page server on 127.0.0.1 for the cardholder's browser --------


def _origin(url: str) -> str:
    """``scheme://host[:port]`` as a browser's Origin header spells it."""
    parts = urlsplit(url)
    host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname
    default = {"http": 80, "https": 443}.get(parts.scheme)
    port = f":{parts.port}" if parts.port not in (None, default) else ""
    return f"{parts.scheme}://{host}{port}"


class Secure3DWait:
    """One payment waiting for 3-D Secure, shared by the page server's threads and the
    command: answers are confirmed one at a time until the payment is decided."""

    def __init__(
        self, payment: Payment, confirm: Callable[[str, str], Payment | Failure], language: str
    ) -> None:
        assert payment.secure3d is not None
        self.payment = payment
        self.md = payment.secure3d.md
        self.acs_origin = _origin(payment.secure3d.action)
        self.language = language
        self.done = threading.Event()
        #: The last answer that left the payment undecided (a pending Failure).
        self.last: Failure | None = None
        self._confirm = confirm
        self._lock = threading.Lock()
        self._outcome: Payment | Failure | None = None
        self._closed = False

    def submit(self, pa_res: str, md: str) -> Payment | Failure | None:
        """Confirm the ACS's answer unless the payment is decided or the wait is over
        (None); a pending Failure keeps the wait open for another answer."""
        with self._lock:
            if self._outcome is not None or self._closed:
                return self._outcome
            outcome = self._confirm(pa_res, md)
            if isinstance(outcome, Failure) and outcome.pending:
                self.last = outcome
            else:
                self._outcome = outcome
            return outcome

    def outcome(self) -> Payment | Failure | None:
        with self._lock:
            return self._outcome

    def close(self) -> Payment | Failure | None:
        """Stop waiting: no confirm starts after this; one in progress is waited for."""
        with self._lock:
            self._closed = True
            return self._outcome


class Secure3DServer(ThreadingHTTPServer):
    """Bound (and listening) when made, before the payment exists; serves once ``wait``
    is set."""

    daemon_threads = True
    wait: Secure3DWait

    def __init__(self, port: int) -> None:
        super().__init__(("127.0.0.1", port), _Secure3DHandler)
        self.port = int(self.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet: a browser that hangs up is no reason for a traceback on the terminal."""


_MAX_FORM = 64 * 1024


class _Secure3DHandler(BaseHTTPRequestHandler):
    """``GET /``: the form that posts PaReq, MD and TermUrl to the ACS. ``POST /term``:
    the ACS's PaRes and MD, confirmed with the gateway; the browser gets the outcome."""

    server: Secure3DServer
    server_version = "tolem"
    sys_version = ""
    timeout = 30

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the terminal shows the command's output only."""

    def do_GET(self) -> None:
        if not self._host_ok():
            return
        if urlsplit(self.path).path != "/":
            self._page(404, "Not found", "This page does not exist.")
            return
        wait = self.server.wait
        outcome = wait.outcome()
        if outcome is not None:
            self._outcome_page(outcome)
            return
        assert wait.payment.secure3d is not None
        form = secure3d_form(
            wait.payment.secure3d, term_url=f"{self.server.url}term", language=wait.language
        )
        self._send(200, form)

    def do_POST(self) -> None:
        if not self._host_ok():
            return
        if urlsplit(self.path).path != "/term":
            self._page(404, "Not found", "This page does not exist.")
            return
        wait = self.server.wait
        if self.headers.get("Origin", "null").lower() not in ("null", wait.acs_origin):
            self._page(403, "Forbidden", "This answer does not come from the issuer's page.")
            return
        try:
            length = int(self.headers.get("Content-Length") or "0")
        except ValueError:
            length = -1
        if not 0 <= length <= _MAX_FORM:
            self._page(400, "Bad request", "The form is missing or too large.")
            return
        body = self.rfile.read(length).decode("utf-8", "replace")
        fields = {k.lower(): v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}
        pa_res, md = fields.get("pares", ""), fields.get("md", "")
        if not pa_res or md != wait.md:
            self._page(400, "Bad request", "This is not the 3-D Secure answer for this payment.")
            return
        outcome = wait.submit(pa_res, md)
        if outcome is None:
            self._page(410, "Too late", "tolem is no longer waiting for this payment.")
            return
        self._outcome_page(outcome)
        if not (isinstance(outcome, Failure) and outcome.pending):
            wait.done.set()  # only now: the browser has its page

    def _host_ok(self) -> bool:
        port = self.server.port
        if self.headers.get("Host", "") in (f"127.0.0.1:{port}", f"localhost:{port}"):
            return True
        self._page(421, "Misdirected request", "Open this page at 127.0.0.1.")
        return False

    def _outcome_page(self, outcome: Payment | Failure) -> None:
        if not isinstance(outcome, Failure):
            self._page(
                200,
                "Payment approved",
                f"{_money(outcome.amount, outcome.currency)}, status {outcome.status}, "
                f"transaction {outcome.id}. You can close this page.",
            )
            return
        code = f" {outcome.code}" if outcome.code is not None else ""
        message = f"{outcome.message} — {outcome.message_ru}"
        if outcome.kind == "unknown":
            title = "Outcome unknown"
            message += ". tolem could not learn whether the payment went through"
        elif outcome.pending:
            title = f"Not confirmed{code}"
        elif outcome.kind == "declined":
            title = f"Payment declined{code}"
        else:
            title = f"Payment failed{code}"
        if outcome.pending:
            message += ". The payment is not decided yet: tolem is still waiting."
        self._page(200, title, message, again=outcome.pending)

    def _page(self, status: int, title: str, message: str, *, again: bool = False) -> None:
        link = '<p><a href="/">Try 3-D Secure again</a></p>' if again else ""
        page = (
            '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(title)}</title></head>\n"
            f"<body><h1>{html.escape(title)}</h1>\n<p>{html.escape(message)}</p>{link}"
            "</body></html>\n"
        )
        self._send(status, page)

    def _send(self, status: int, page: str) -> None:
        data = page.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)


def listen(conn: Connection, port: int) -> Secure3DServer:
    """The 3-D Secure page's port, opened before paying: a port in use fails the command
    before any payment exists."""
    try:
        return Secure3DServer(port)
    except OSError as exc:
        fail(
            conn,
            Failure(
                "ListenError",
                f"cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}; nothing was paid",
                "Не удалось открыть порт для 3-D Secure; платёж не создан",  # noqa: RUF001
            ),
        )


def wait_for_3ds(
    conn: Connection,
    client: EpayClient,
    server: Secure3DServer,
    payment: Payment,
    *,
    language: str,
    wait_timeout: float,
) -> Payment:
    """Serve the ACS form and wait for the ACS's answer; the final payment, or exit 1
    (declined, refused, timed out)."""
    secure3d = payment.secure3d
    assert secure3d is not None
    wait = Secure3DWait(payment, functools.partial(confirm_3ds, client, payment), language)
    server.wait = wait
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="tolem-3ds", daemon=True
    )
    thread.start()
    try:
        _note(conn, f"3-D Secure: the issuer's ACS is {secure3d.action}")
        _note(conn, f"Open {server.url} in a browser to pass 3-D Secure")
        _note(conn, f"Waiting up to {wait_timeout:g} s (transaction {payment.id}) …")
        wait.done.wait(wait_timeout)
        outcome = wait.close()
    finally:
        server.shutdown()
        thread.join()
    if outcome is None and wait.last is not None:  # an answer whose outcome was unclear
        outcome = decided(client, payment, wait.last)
    if outcome is None:
        fail(
            conn,
            Failure(
                "Secure3DTimeout",
                f"3-D Secure was not passed in {wait_timeout:g} s; "
                "the payment stays unfinished until the gateway expires it",
                f"3-D Secure не пройден за {wait_timeout:g} с",  # noqa: RUF001
                id=payment.id,
                invoice_id=payment.invoice_id,
            ),
        )
    if isinstance(outcome, Failure):
        fail(conn, outcome)
    return outcome


# --- the commands -------------------------------------------------------------------

_ORDER = "Order"
_3DS = "3-D Secure"


@app.command(**_COMMAND)
def pay(
    ctx: typer.Context,
    amount: Annotated[
        str, typer.Option("--amount", help="Amount, e.g. 100 or 99.95 (at most 2 decimals).")
    ],
    exp: Annotated[str, typer.Option("--exp", help="Expiry, MM/YY (or MMYY, MM/YYYY).")],
    card: Annotated[
        str | None,
        typer.Option(
            "--card",
            help="Card number (never printed). Leave it out to type it at a hidden prompt "
            "(or pipe it on standard input): a command line is visible to other local "
            "users (ps) and lands in shell history.",
        ),
    ] = None,
    cvc: Annotated[
        str | None,
        typer.Option(
            "--cvc",
            help="CVC/CVV. Leave it out to type it at a hidden prompt (or pipe it on "
            "standard input, after the card number if --card is left out too).",
        ),
    ] = None,
    invoice: Annotated[
        str | None,
        typer.Option(
            "--invoice",
            help="Invoice ID, 6 to 15 digits (default: 12 random digits).",
            rich_help_panel=_ORDER,
        ),
    ] = None,
    currency: Annotated[str, typer.Option(help="Currency.", rich_help_panel=_ORDER)] = "KZT",
    description: Annotated[
        str, typer.Option(help="What is paid for.", rich_help_panel=_ORDER)
    ] = "tolem CLI payment",
    name: Annotated[
        str, typer.Option("--name", help="Cardholder name.", rich_help_panel=_ORDER)
    ] = "CARDHOLDER",
    account_id: Annotated[
        str, typer.Option("--account-id", help="Customer ID in your shop.", rich_help_panel=_ORDER)
    ] = "",
    email: Annotated[str, typer.Option(help="Customer email.", rich_help_panel=_ORDER)] = "",
    phone: Annotated[str, typer.Option(help="Customer phone.", rich_help_panel=_ORDER)] = "",
    post_link: Annotated[
        str,
        typer.Option("--post-link", help="URL the result is POSTed to.", rich_help_panel=_ORDER),
    ] = "",
    failure_post_link: Annotated[
        str,
        typer.Option(
            "--failure-post-link", help="URL a failure is POSTed to.", rich_help_panel=_ORDER
        ),
    ] = "",
    secret_hash: Annotated[
        str,
        typer.Option("--secret-hash", help="Echoed back in the postLink.", rich_help_panel=_ORDER),
    ] = "",
    card_save: Annotated[
        bool,
        typer.Option(
            "--card-save", help="Save the card; prints its card ID.", rich_help_panel=_ORDER
        ),
    ] = False,
    language: Annotated[
        str,
        typer.Option(
            metavar="rus|kaz|eng",
            callback=_one_of("rus", "kaz", "eng"),
            help="Language of the pages.",
            rich_help_panel=_ORDER,
        ),
    ] = "rus",
    wait_timeout: Annotated[
        float,
        typer.Option(
            "--wait-timeout",
            min=1.0,
            max=86400.0,
            help="Seconds to wait for 3-D Secure before giving up (exit status 1).",
            rich_help_panel=_3DS,
        ),
    ] = 900.0,
    no_wait: Annotated[
        bool,
        typer.Option(
            "--no-wait",
            help="Do not wait for 3-D Secure: print the payment with its ACS address, PaReq "
            "and MD, and exit with status 3.",
            rich_help_panel=_3DS,
        ),
    ] = False,
    listen_port: Annotated[
        int,
        typer.Option(
            "--listen-port",
            min=0,
            max=65535,
            help="Port on 127.0.0.1 for the 3-D Secure page (0: any free port). Opened "
            "before paying: if it is in use, the command fails (exit status 1) and pays "
            "nothing.",
            rich_help_panel=_3DS,
        ),
    ] = 0,
    url: Url = DEFAULT_URL,
    env: Env = None,
    client_id: ClientId = _SANDBOX.client_id,
    client_secret: ClientSecret = _SANDBOX.client_secret,
    terminal: TerminalId = _SANDBOX.terminal_id,
    timeout: Timeout = 30.0,
    as_json: AsJson = False,
) -> None:
    """Pay with a card (token, cryptogram, cryptopay) and print the result.

    3-D Secure: serves the ACS form on 127.0.0.1, prints its address, waits for the browser.

    Exit status: 0 approved, 1 declined or refused, 2 usage error, 3 waiting for 3-D Secure.

    The card number and the CVC are never printed: only the card's mask.
    """
    conn = Connection.from_options(ctx)
    total = parse_amount(amount)
    invoice_id = invoice.strip() if invoice is not None else _random_invoice()
    if not re.fullmatch(r"[0-9]{6,15}", invoice_id):
        raise typer.BadParameter("must be 6 to 15 digits", param_hint="--invoice")
    if not re.fullmatch(r"[A-Za-z]{3}", currency.strip()):
        raise typer.BadParameter("must be a three-letter code, e.g. KZT", param_hint="--currency")
    try:
        order = PaymentRequest(
            invoice_id=invoice_id,
            amount=total,
            currency=currency.strip().upper(),
            description=description,
            name=name,
            account_id=account_id,
            email=email,
            phone=phone,
            post_link=post_link,
            failure_post_link=failure_post_link,
            secret_hash=secret_hash,
            card_save=card_save,
            language=language,
        )
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise typer.BadParameter(problems) from None
    if card is None and not (card := read_secret("Card number")):
        raise typer.BadParameter(
            "no card number given: type it at the prompt or pipe it on standard input",
            param_hint="--card",
        )
    if cvc is None and not (cvc := read_secret("CVC")):
        raise typer.BadParameter(
            "no CVC given: type it at the prompt or pipe it on standard input",
            param_hint="--cvc",
        )
    card_data = parse_card(card, exp, cvc)
    server = None if no_wait else listen(conn, listen_port)
    try:
        with conn.client() as client:
            try:
                payment = client.pay(order, card_data)
            except EpayError as exc:
                fail(conn, Failure.of(exc, invoice_id=invoice_id))
            if payment.needs_3ds:
                if server is None:
                    show_pending(conn, payment)
                payment = wait_for_3ds(
                    conn, client, server, payment, language=language, wait_timeout=wait_timeout
                )
    finally:
        if server is not None:
            server.server_close()
    show_payment(conn, payment)


@app.command(**_COMMAND)
def status(
    ctx: typer.Context,
    invoice: Annotated[str, typer.Argument(metavar="INVOICE", help="The shop's invoice ID.")],
    url: Url = DEFAULT_URL,
    env: Env = None,
    client_id: ClientId = _SANDBOX.client_id,
    client_secret: ClientSecret = _SANDBOX.client_secret,
    terminal: TerminalId = _SANDBOX.terminal_id,
    timeout: Timeout = 30.0,
    as_json: AsJson = False,
) -> None:
    """The newest payment of an invoice: status, amount, reason, card mask, reference."""
    conn = Connection.from_options(ctx)
    invoice_id = _required(invoice, "INVOICE")
    with conn.client() as client:
        try:
            tx = client.status(invoice_id)
        except EpayError as exc:
            fail(conn, Failure.of(exc, invoice_id=invoice_id))
    show_transaction(conn, tx)


_TransactionId = Annotated[
    str, typer.Argument(metavar="ID", help="The transaction ID (a UUID), from pay or status.")
]
_OperationAmount = Annotated[
    str | None, typer.Option("--amount", help="Part of the amount (default: all of it).")
]


@app.command(**_COMMAND)
def charge(
    ctx: typer.Context,
    transaction_id: _TransactionId,
    amount: _OperationAmount = None,
    url: Url = DEFAULT_URL,
    env: Env = None,
    client_id: ClientId = _SANDBOX.client_id,
    client_secret: ClientSecret = _SANDBOX.client_secret,
    terminal: TerminalId = _SANDBOX.terminal_id,
    timeout: Timeout = 30.0,
    as_json: AsJson = False,
) -> None:
    """Charge an authorized (AUTH) payment, in full or in part."""
    conn = Connection.from_options(ctx)
    part = parse_amount(amount) if amount is not None else None
    with conn.client() as client:
        _operation(conn, "charge", transaction_id, functools.partial(client.charge, amount=part))


@app.command(**_COMMAND)
def cancel(
    ctx: typer.Context,
    transaction_id: _TransactionId,
    url: Url = DEFAULT_URL,
    env: Env = None,
    client_id: ClientId = _SANDBOX.client_id,
    client_secret: ClientSecret = _SANDBOX.client_secret,
    terminal: TerminalId = _SANDBOX.terminal_id,
    timeout: Timeout = 30.0,
    as_json: AsJson = False,
) -> None:
    """Cancel an authorized (AUTH) payment: releases the whole amount."""
    conn = Connection.from_options(ctx)
    with conn.client() as client:
        _operation(conn, "cancel", transaction_id, client.cancel)


@app.command(**_COMMAND)
def refund(
    ctx: typer.Context,
    transaction_id: _TransactionId,
    amount: _OperationAmount = None,
    external_id: Annotated[
        str | None, typer.Option("--external-id", help="Your ID for this refund.")
    ] = None,
    url: Url = DEFAULT_URL,
    env: Env = None,
    client_id: ClientId = _SANDBOX.client_id,
    client_secret: ClientSecret = _SANDBOX.client_secret,
    terminal: TerminalId = _SANDBOX.terminal_id,
    timeout: Timeout = 30.0,
    as_json: AsJson = False,
) -> None:
    """Refund a charged (CHARGE) payment, in full or in part."""
    conn = Connection.from_options(ctx)
    part = parse_amount(amount) if amount is not None else None
    with conn.client() as client:
        run = functools.partial(client.refund, amount=part, external_id=external_id or None)
        _operation(conn, "refund", transaction_id, run)


def _operation(
    conn: Connection, kind: str, transaction_id: str, run: Callable[[str], OperationResult]
) -> None:
    tx_id = _required(transaction_id, "ID")
    try:
        result = run(tx_id)
    except EpayError as exc:
        fail(conn, Failure.of(exc, tx_id))
    show_operation(conn, kind, tx_id, result)
