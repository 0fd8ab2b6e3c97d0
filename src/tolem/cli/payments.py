"""``tolem pay``, ``status``, ``charge``, ``cancel`` and ``refund``: the SDK from a shell.

Each command speaks ePay's merchant protocol through :mod:`tolem.client`, to a tolem
gateway (``--url``) or to ePay's own hosts (``--env test|production``).

Exit statuses: 0 done (the payment approved, the operation done), 1 refused (declined,
an error of the gateway, no answer, 3-D Secure not finished in time), 2 a usage error,
3 waiting for 3-D Secure (``pay --no-wait``).

The card number and the CVC are never printed or logged: only the card's mask is.
"""

from __future__ import annotations

import functools
import html
import inspect
import json
import re
import secrets
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, get_type_hints
from urllib.parse import parse_qs, urlsplit

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from tolem.cli import app, console
from tolem.merchants.service import (  # ePay's public sandbox merchant, seeded in sandbox mode
    SANDBOX_CLIENT_ID,
    SANDBOX_CLIENT_SECRET,
    SANDBOX_TERMINAL_ID,
)

if TYPE_CHECKING:
    from tolem.client import (
        Card,
        ConfirmResult,
        EpayClient,
        EpayError,
        OperationResult,
        Payment,
        Transaction,
    )

#: The payment is waiting for 3-D Secure (``tolem pay --no-wait``).
EXIT_PENDING_3DS = 3
EXIT_FAILED = 1

#: Where ``tolem serve`` (and ``./dev serve``) listens by default.
DEFAULT_URL = "http://127.0.0.1:8000"

err_console = Console(stderr=True)


class EpayHosts(StrEnum):
    TEST = "test"
    PRODUCTION = "production"


class Language(StrEnum):
    RUS = "rus"
    KAZ = "kaz"
    ENG = "eng"


# --- the options every command shares -----------------------------------------------


@dataclass(frozen=True)
class Connection:
    """Where to send the calls, as whom, and how to print the answer (``--json``)."""

    url: str | None
    hosts: EpayHosts | None
    client_id: str
    client_secret: str
    terminal_id: str
    timeout: float
    as_json: bool

    def client(self) -> EpayClient:
        from tolem.client import PRODUCTION, TEST, Environment, EpayClient

        if self.hosts is EpayHosts.PRODUCTION:
            environment = PRODUCTION
        elif self.hosts is EpayHosts.TEST:
            environment = TEST
        else:
            environment = Environment.tolem(self.url or DEFAULT_URL)
        return EpayClient(
            environment,
            client_id=self.client_id,
            client_secret=self.client_secret,
            terminal_id=self.terminal_id,
            timeout=self.timeout,
        )


_PANEL = "Connection"
_KEYWORD = inspect.Parameter.KEYWORD_ONLY
_CONNECTION_OPTIONS = [
    inspect.Parameter(
        "url",
        _KEYWORD,
        default=DEFAULT_URL,
        annotation=Annotated[
            str,
            typer.Option(
                "--url",
                envvar="TOLEM_URL",
                help="Base URL of a tolem gateway.",
                rich_help_panel=_PANEL,
            ),
        ],
    ),
    inspect.Parameter(
        "hosts",
        _KEYWORD,
        default=None,
        annotation=Annotated[
            EpayHosts | None,
            typer.Option(
                "--env",
                case_sensitive=False,
                help="Talk to ePay's own hosts instead of a tolem gateway: test or "
                "production (then --client-id, --client-secret and --terminal are "
                "required). Not together with --url.",
                rich_help_panel=_PANEL,
            ),
        ],
    ),
    inspect.Parameter(
        "client_id",
        _KEYWORD,
        default=SANDBOX_CLIENT_ID,
        annotation=Annotated[
            str,
            typer.Option(
                "--client-id",
                envvar="TOLEM_CLIENT_ID",
                help="ClientID (default: the sandbox merchant's).",
                show_default=False,
                rich_help_panel=_PANEL,
            ),
        ],
    ),
    inspect.Parameter(
        "client_secret",
        _KEYWORD,
        default=SANDBOX_CLIENT_SECRET,
        annotation=Annotated[
            str,
            typer.Option(
                "--client-secret",
                envvar="TOLEM_CLIENT_SECRET",
                help="ClientSecret (default: the sandbox merchant's). Prefer the "
                "environment variable: a command line lands in shell history.",
                show_default=False,
                rich_help_panel=_PANEL,
            ),
        ],
    ),
    inspect.Parameter(
        "terminal",
        _KEYWORD,
        default=SANDBOX_TERMINAL_ID,
        annotation=Annotated[
            str,
            typer.Option(
                "--terminal",
                envvar="TOLEM_TERMINAL_ID",
                help="TerminalID (default: the sandbox terminal).",
                show_default=False,
                rich_help_panel=_PANEL,
            ),
        ],
    ),
    inspect.Parameter(
        "timeout",
        _KEYWORD,
        default=30.0,
        annotation=Annotated[
            float,
            typer.Option(
                "--timeout",
                min=0.1,
                help="Seconds to wait for each HTTP answer.",
                rich_help_panel=_PANEL,
            ),
        ],
    ),
    inspect.Parameter(
        "as_json",
        _KEYWORD,
        default=False,
        annotation=Annotated[
            bool,
            typer.Option(
                "--json",
                help="Print one JSON object on standard output (errors too), for scripts.",
                rich_help_panel=_PANEL,
            ),
        ],
    ),
]
_CONNECTION_NAMES = tuple(p.name for p in _CONNECTION_OPTIONS)


def _connection(
    ctx: typer.Context,
    *,
    url: str,
    hosts: EpayHosts | None,
    client_id: str,
    client_secret: str,
    terminal: str,
    timeout: float,
    as_json: bool,
) -> Connection:
    if ctx.args:  # only pay takes them, to refuse them here: they may be a card number
        raise typer.BadParameter(
            f"{len(ctx.args)} unexpected argument(s), not shown as they may hold card data"
        )

    def given(name: str) -> bool:  # on the command line or in the environment
        source = ctx.get_parameter_source(name)
        return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT", "PROMPT")

    if hosts is not None:
        source = ctx.get_parameter_source("url")
        if source is not None and source.name == "COMMANDLINE":
            raise typer.BadParameter(
                "not together with --env: --url names a tolem gateway, --env ePay's own hosts",
                param_hint="--url",
            )
        if hosts is EpayHosts.PRODUCTION and not all(
            given(name) for name in ("client_id", "client_secret", "terminal")
        ):
            raise typer.BadParameter(
                "production needs your merchant's --client-id, --client-secret and "
                "--terminal (or TOLEM_CLIENT_ID, TOLEM_CLIENT_SECRET, TOLEM_TERMINAL_ID)",
                param_hint="--env",
            )
    else:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise typer.BadParameter("must be an http or https URL", param_hint="--url")
    return Connection(
        url=None if hosts is not None else url,
        hosts=hosts,
        client_id=client_id,
        client_secret=client_secret,
        terminal_id=terminal,
        timeout=timeout,
        as_json=as_json,
    )


def with_connection(func: Callable[..., None]) -> Callable[..., None]:
    """Give a command the shared options: ``func(conn, **its own options)``.

    The command's signature, as Typer reads it, is ``func``'s without ``conn`` plus
    ``--url``, ``--env``, ``--client-id``, ``--client-secret``, ``--terminal``,
    ``--timeout`` and ``--json``.
    """
    hints = get_type_hints(func, include_extras=True)
    own = [
        p.replace(annotation=hints[p.name])
        for p in inspect.signature(func).parameters.values()
        if p.name != "conn"
    ]
    context = inspect.Parameter("ctx", _KEYWORD, annotation=typer.Context)
    parameters = [*own, context, *_CONNECTION_OPTIONS]

    @functools.wraps(func)
    def command(**options: Any) -> None:
        connection = {name: options.pop(name) for name in _CONNECTION_NAMES}
        conn = _connection(options.pop("ctx"), **connection)
        func(conn, **options)

    command.__signature__ = inspect.Signature(parameters, return_annotation=None)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in parameters} | {"return": None}
    return command


# --- printing -----------------------------------------------------------------------


@dataclass(frozen=True)
class Failure:
    """What ends a command with exit status 1: an EpayError, or the CLI's own time-out."""

    error: str
    message: str
    message_ru: str
    code: int | None = None
    status_code: int | None = None
    id: str = ""
    declined: bool = False

    @classmethod
    def of(cls, exc: EpayError, transaction_id: str = "") -> Failure:
        from tolem.client import PaymentDeclined

        return cls(
            error=type(exc).__name__,
            message=exc.message,
            message_ru=exc.message_ru,
            code=exc.code,
            status_code=exc.status_code,
            id=exc.transaction_id or transaction_id,
            declined=isinstance(exc, PaymentDeclined),
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "error": self.error,
            "code": self.code,
            "message": self.message,
            "message_ru": self.message_ru,
            "status_code": self.status_code,
            "id": self.id or None,
        }


def fail(conn: Connection, failure: Failure) -> NoReturn:
    if conn.as_json:
        _print_json(failure.as_json())
    else:
        what = "Payment declined" if failure.declined else failure.error
        code = f", code {failure.code}" if failure.code is not None else ""
        line = f"{what}{code}: {failure.message} — {failure.message_ru}"
        err_console.print(Text(line, style="bold red"), soft_wrap=True)
        if failure.id:
            err_console.print(Text(f"transaction {failure.id}", style="dim"), soft_wrap=True)
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


_EXPIRY = re.compile(r"(0[1-9]|1[0-2])(/?[0-9]{2}|/[0-9]{4})")


def parse_card(pan: str, exp: str, cvc: str) -> Card:
    """The card, or a usage error that names the option but never repeats its value."""
    from tolem.client import Card, CardDataError

    digits = re.sub(r"[\s-]", "", pan)
    if not re.fullmatch(r"[0-9]{12,19}", digits):
        raise typer.BadParameter(
            "must be the card number: 12 to 19 digits (spaces allowed); not shown here",
            param_hint="--card",
        )
    if not _EXPIRY.fullmatch(exp.strip()):
        raise typer.BadParameter(
            "must be the expiry as MM/YY (or MMYY, MM/YYYY), e.g. 01/25", param_hint="--exp"
        )
    if not re.fullmatch(r"[0-9]{3,4}", cvc.strip()):
        raise typer.BadParameter("must be 3 or 4 digits; not shown here", param_hint="--cvc")
    try:
        return Card.parse(digits, exp.strip(), cvc.strip())
    except CardDataError as exc:  # its message names the rule, never the value
        option = {"pan": "--card", "exp": "--exp", "cvc": "--cvc"}.get(exc.field, "--card")
        raise typer.BadParameter(str(exc), param_hint=option) from None


def read_cvc() -> str:
    """The CVC from a hidden prompt, or the first line of standard input when it is
    not a terminal (``echo 815 | tolem pay …``)."""
    if sys.stdin.isatty():
        return str(typer.prompt("CVC", hide_input=True, err=True))
    return sys.stdin.readline().strip()


def _random_invoice() -> str:
    return f"{secrets.randbelow(10**12):012d}"


# --- 3-D Secure: a one-page server on 127.0.0.1 for the cardholder's browser --------


class Secure3DWait:
    """The state of one payment waiting for 3-D Secure, shared by the page server's
    threads and the command: the first valid PaRes is confirmed, once."""

    def __init__(
        self,
        payment: Payment,
        confirm: Callable[[str, str], Payment | Failure],
        language: str,
    ) -> None:
        assert payment.secure3d is not None
        self.payment = payment
        self.md = payment.secure3d.md
        self.language = language
        self.done = threading.Event()
        self._confirm = confirm
        self._lock = threading.Lock()
        self._outcome: Payment | Failure | None = None
        self._closed = False

    def submit(self, pa_res: str, md: str) -> Payment | Failure | None:
        """Confirm with the ACS's answer unless already confirmed or no longer waiting."""
        with self._lock:
            if self._outcome is None and not self._closed:
                self._outcome = self._confirm(pa_res, md)
            return self._outcome

    def outcome(self) -> Payment | Failure | None:
        with self._lock:
            return self._outcome

    def close(self) -> Payment | Failure | None:
        """Stop waiting: no confirm starts after this; one in progress is waited for."""
        with self._lock:
            self._closed = True
            return self._outcome


class Secure3DServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_port = False  # a second tolem pay on the same port must fail, not share it

    def __init__(self, port: int, wait: Secure3DWait) -> None:
        super().__init__(("127.0.0.1", port), _Secure3DHandler)
        self.wait = wait
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
        from tolem.client import secure3d_form

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
        wait = self.server.wait
        if not pa_res or md != wait.md:
            self._page(400, "Bad request", "This is not the 3-D Secure answer for this payment.")
            return
        outcome = wait.submit(pa_res, md)
        if outcome is None:
            self._page(410, "Too late", "tolem is no longer waiting for this payment.")
            return
        self._outcome_page(outcome)
        wait.done.set()  # only now: the browser has its page

    def _host_ok(self) -> bool:
        port = self.server.port
        if self.headers.get("Host", "") in (f"127.0.0.1:{port}", f"localhost:{port}"):
            return True
        self._page(421, "Misdirected request", "Open this page at 127.0.0.1.")
        return False

    def _outcome_page(self, outcome: Payment | Failure) -> None:
        if isinstance(outcome, Failure):
            code = f" {outcome.code}" if outcome.code is not None else ""
            message = f"{outcome.message} — {outcome.message_ru}"
            self._page(200, f"Payment declined{code}", message)
        else:
            self._page(
                200,
                "Payment approved",
                f"{_money(outcome.amount, outcome.currency)}, status {outcome.status}, "
                f"transaction {outcome.id}. You can close this page.",
            )

    def _page(self, status: int, title: str, message: str) -> None:
        page = (
            '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(title)}</title></head>\n"
            f"<body><h1>{html.escape(title)}</h1>\n<p>{html.escape(message)}</p></body></html>\n"
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


def confirmed(payment: Payment, result: ConfirmResult) -> Payment:
    """The payment as it stands after 3-D Secure: confirm's status, reference and card."""
    card_id = payment.card_id or result.card_id
    if not card_id and result.redirect_url:  # ePay's success page carries the saved card
        card_id = parse_qs(urlsplit(result.redirect_url).query).get("cardid", [""])[0]
    return payment.model_copy(
        update={
            "secure3d": None,
            "code": result.code,
            "status": result.status,
            "reference": result.reference or payment.reference,
            "approval_code": result.approval_code or payment.approval_code,
            "card_mask": result.card_mask or payment.card_mask,
            "card_id": card_id,
        }
    )


def wait_for_3ds(
    conn: Connection,
    client: EpayClient,
    payment: Payment,
    *,
    language: str,
    listen_port: int,
    wait_timeout: float,
) -> Payment:
    """Serve the ACS form on 127.0.0.1 and wait for the ACS's answer; the final payment,
    or exit 1 (declined, refused, timed out)."""
    from tolem.client import EpayError

    secure3d = payment.secure3d
    assert secure3d is not None

    def confirm(pa_res: str, md: str) -> Payment | Failure:
        try:
            return confirmed(payment, client.confirm(payment.id, pa_res, md))
        except EpayError as exc:
            return Failure.of(exc, payment.id)
        except Exception as exc:  # never leave the browser (and the command) hanging
            return Failure(
                type(exc).__name__, str(exc), "Ошибка подтверждения 3-D Secure", id=payment.id
            )

    wait = Secure3DWait(payment, confirm, language)
    try:
        server = Secure3DServer(listen_port, wait)
    except OSError as exc:
        fail(
            conn,
            Failure(
                "ListenError",
                f"cannot listen on 127.0.0.1:{listen_port}: {exc.strerror or exc}",
                "Не удалось открыть порт для 3-D Secure",  # noqa: RUF001
                id=payment.id,
            ),
        )
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
        server.server_close()
        thread.join()
    if outcome is None:
        fail(
            conn,
            Failure(
                "Secure3DTimeout",
                f"3-D Secure was not passed in {wait_timeout:g} s; "
                "the payment stays unfinished until the gateway expires it",
                f"3-D Secure не пройден за {wait_timeout:g} с",  # noqa: RUF001
                id=payment.id,
            ),
        )
    if isinstance(outcome, Failure):
        fail(conn, outcome)
    return outcome


def show_pending(conn: Connection, payment: Payment) -> NoReturn:
    """``--no-wait``: what a shop needs to send the cardholder to the ACS; exit 3."""
    secure3d = payment.secure3d
    assert secure3d is not None
    data = {
        "id": payment.id,
        "invoiceId": payment.invoice_id,
        "action": secure3d.action,
        "paReq": secure3d.pa_req,
        "md": secure3d.md,
    }
    if conn.as_json:
        _print_json(data)
    else:
        console.print(Text("Waiting for 3-D Secure", style="bold yellow"))
        for name, value in data.items():
            console.print(Text(f"{name}: {value}"), soft_wrap=True)
        console.print(
            Text(
                "Post PaReq, MD and your TermUrl to the action (the issuer's ACS), then "
                "confirm the ACS's PaRes and MD with POST /payment/confirm.",
                style="dim",
            ),
            soft_wrap=True,
        )
    raise typer.Exit(EXIT_PENDING_3DS)


# --- the commands -------------------------------------------------------------------

_ORDER = "Order"
_3DS = "3-D Secure"


@app.command(context_settings={"allow_extra_args": True})
@with_connection
def pay(
    conn: Connection,
    amount: Annotated[
        str, typer.Option("--amount", help="Amount, e.g. 100 or 99.95 (at most 2 decimals).")
    ],
    card: Annotated[str, typer.Option("--card", help="Card number (never printed).")],
    exp: Annotated[str, typer.Option("--exp", help="Expiry, MM/YY.")],
    cvc: Annotated[
        str | None,
        typer.Option(
            "--cvc",
            help="CVC/CVV. Leave it out to type it at a hidden prompt (or pipe it on "
            "standard input): on the command line it lands in your shell history.",
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
        Language,
        typer.Option(case_sensitive=False, help="Language of the pages.", rich_help_panel=_ORDER),
    ] = Language.RUS,
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
            help="Do not wait for 3-D Secure: print the transaction ID, ACS address, PaReq "
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
            help="Port on 127.0.0.1 for the 3-D Secure page (0: any free port).",
            rich_help_panel=_3DS,
        ),
    ] = 0,
) -> None:
    """Pay with a card (token, cryptogram, cryptopay) and print the result.

    3-D Secure: serves the ACS form on 127.0.0.1, prints its address, waits for the browser.

    Exit status: 0 approved, 1 declined or refused, 2 usage error, 3 waiting for 3-D Secure.

    The card number and the CVC are never printed: only the card's mask.
    """
    from pydantic import ValidationError

    from tolem.client import EpayError, PaymentRequest

    total = parse_amount(amount)
    invoice_id = invoice.strip() if invoice is not None else _random_invoice()
    if not re.fullmatch(r"[0-9]{6,15}", invoice_id):
        raise typer.BadParameter("must be 6 to 15 digits", param_hint="--invoice")
    if not re.fullmatch(r"[A-Za-z]{3}", currency.strip()):
        raise typer.BadParameter("must be a three-letter code, e.g. KZT", param_hint="--currency")
    if cvc is None:
        cvc = read_cvc()
        if not cvc:
            raise typer.BadParameter(
                "no CVC given: type it at the prompt or pipe it on standard input",
                param_hint="--cvc",
            )
    card_data = parse_card(card, exp, cvc)
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
            language=language.value,
        )
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise typer.BadParameter(problems) from None
    with conn.client() as client:
        try:
            payment = client.pay(order, card_data)
        except EpayError as exc:
            fail(conn, Failure.of(exc))
        if payment.needs_3ds:
            if no_wait:
                show_pending(conn, payment)
            payment = wait_for_3ds(
                conn,
                client,
                payment,
                language=language.value,
                listen_port=listen_port,
                wait_timeout=wait_timeout,
            )
    show_payment(conn, payment)


@app.command()
@with_connection
def status(
    conn: Connection,
    invoice: Annotated[str, typer.Argument(help="The shop's invoice ID.")],
) -> None:
    """The newest payment of an invoice: status, amount, reason, card mask, reference."""
    from tolem.client import EpayError

    invoice_id = _required(invoice, "INVOICE")
    with conn.client() as client:
        try:
            tx = client.status(invoice_id)
        except EpayError as exc:
            fail(conn, Failure.of(exc))
    show_transaction(conn, tx)


_TransactionId = Annotated[
    str, typer.Argument(metavar="ID", help="The transaction ID (a UUID), from pay or status.")
]
_OperationAmount = Annotated[
    str | None, typer.Option("--amount", help="Part of the amount (default: all of it).")
]


@app.command()
@with_connection
def charge(
    conn: Connection, transaction_id: _TransactionId, amount: _OperationAmount = None
) -> None:
    """Charge an authorized (AUTH) payment, in full or in part."""
    _operation(conn, "charge", transaction_id, amount)


@app.command()
@with_connection
def cancel(conn: Connection, transaction_id: _TransactionId) -> None:
    """Cancel an authorized (AUTH) payment: releases the whole amount."""
    _operation(conn, "cancel", transaction_id)


@app.command()
@with_connection
def refund(
    conn: Connection,
    transaction_id: _TransactionId,
    amount: _OperationAmount = None,
    external_id: Annotated[
        str | None, typer.Option("--external-id", help="Your ID for this refund.")
    ] = None,
) -> None:
    """Refund a charged (CHARGE) payment, in full or in part."""
    _operation(conn, "refund", transaction_id, amount, external_id)


def _required(value: str, what: str) -> str:
    if not value.strip():
        raise typer.BadParameter("must not be empty", param_hint=what)
    return value.strip()


def _operation(
    conn: Connection,
    kind: str,
    transaction_id: str,
    amount: str | None = None,
    external_id: str | None = None,
) -> None:
    from tolem.client import EpayError

    tx_id = _required(transaction_id, "ID")
    part = parse_amount(amount) if amount is not None else None
    with conn.client() as client:
        try:
            if kind == "charge":
                result = client.charge(tx_id, part)
            elif kind == "cancel":
                result = client.cancel(tx_id)
            else:
                result = client.refund(tx_id, part, external_id=external_id or None)
        except EpayError as exc:
            fail(conn, Failure.of(exc, tx_id))
    show_operation(conn, kind, tx_id, result)
