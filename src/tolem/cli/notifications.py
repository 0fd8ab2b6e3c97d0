"""``tolem worker``, ``tolem notifications …`` and ``tolem merchant signing``."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from typing import Annotated, Any

import typer
from rich.table import Table

from tolem.cli import DatabaseUrl, _data_dir, _migrated, _settings, app, console, merchant_app
from tolem.config import Mode

log = logging.getLogger("tolem.worker")

notifications_app = typer.Typer(no_args_is_help=True, help="postLink notifications.")
app.add_typer(notifications_app, name="notifications")

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _StoppedWhileStarting(BaseException):  # not caught by `except Exception`
    """SIGINT or SIGTERM arrived before the worker started delivering."""


class _StopRequests:
    """SIGINT and SIGTERM from the first line of ``tolem worker`` on.

    While the worker starts (imports, keys, migrations, possibly waiting for another
    writer of the database) a stop request interrupts the start at once: nothing is in
    flight yet, and a process manager or a test that stops a worker still starting gets
    a clean exit (0) instead of a death by signal. Once the event loop runs, its own
    handlers take over; a request that arrives in between, or after the loop has closed,
    is only remembered.
    """

    def __init__(self) -> None:
        self.requested = False
        self.starting = True
        for signum in _STOP_SIGNALS:
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.requested = True
        if self.starting:
            raise _StoppedWhileStarting

    def started(self) -> None:
        self.starting = False

    def restore(self) -> None:
        """Take the signals back from the event loop, before it closes."""
        for signum in _STOP_SIGNALS:
            signal.signal(signum, self._on_signal)


@app.command()
def worker(
    database_url: DatabaseUrl = None,
    mode: Annotated[
        Mode | None, typer.Option(help="sandbox or production (env TOLEM_MODE).")
    ] = None,
) -> None:
    """Deliver postLinks and run the recovery sweep, without serving HTTP."""
    stops = _StopRequests()
    try:
        _work(database_url, mode, stops)
    except _StoppedWhileStarting:
        console.print("tolem worker stopped before it started delivering", style="dim")


def _work(database_url: str | None, mode: Mode | None, stops: _StopRequests) -> None:
    from tolem.db.migrate import prepare_database
    from tolem.keys import KeyConfigError
    from tolem.logs import configure_logging
    from tolem.notifications.delivery import DeliveryWorker
    from tolem.processor import AcquirerConfigError
    from tolem.production import ProductionError
    from tolem.recovery import keep_recovering
    from tolem.runtime import Runtime

    settings = _settings(database_url, mode=mode)
    configure_logging(settings)
    _data_dir(settings)
    try:
        rt = Runtime.start(settings)
    except (KeyConfigError, AcquirerConfigError, ProductionError) as exc:
        console.print(f"[red]tolem cannot start:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(2) from None
    try:
        try:
            prepare_database(rt.db, sandbox=settings.is_sandbox)
        except ProductionError as exc:
            console.print(f"[red]tolem cannot start:[/red] {exc}", soft_wrap=True)
            raise typer.Exit(2) from None

        async def main() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in _STOP_SIGNALS:
                loop.add_signal_handler(signum, stop.set)
            stops.started()
            if stops.requested:  # asked between the start and the loop's handlers
                stop.set()
            log.info("tolem worker delivering postLinks")
            # The recovery sweep too (at start-up, then periodically): a deployment whose
            # gateway processes all died still settles what they left unfinished.
            recovering = asyncio.create_task(keep_recovering(rt, stop))
            try:
                await DeliveryWorker(rt, name="tolem-worker").run(stop)
            finally:
                stop.set()
                await recovering
                await rt.db.dispose_on_the_loop()
                # Ours again before the loop closes (closing would put the defaults
                # back): a second request while closing is not a death by signal.
                for signum in _STOP_SIGNALS:
                    loop.remove_signal_handler(signum)
                stops.restore()

        asyncio.run(main())
    finally:
        rt.close()


def _row(n: Any) -> dict[str, Any]:
    return {
        "id": n.id,
        "transactionId": n.transaction_id,
        "url": n.url,
        "state": n.state,
        "attempts": n.attempts,
        "lastStatus": n.last_status,
        "lastError": n.last_error,
        "nextAttemptAt": n.next_attempt_at.isoformat() if n.state == "pending" else None,
        "createdAt": n.created_at.isoformat(),
        "deliveredAt": n.delivered_at.isoformat() if n.delivered_at else None,
    }


@notifications_app.command("list")
def notifications_list(
    failed: Annotated[bool, typer.Option("--failed", help="Only those given up.")] = False,
    pending: Annotated[bool, typer.Option("--pending", help="Only those not sent yet.")] = False,
    limit: Annotated[int, typer.Option("--limit", min=1, max=10000)] = 100,
    database_url: DatabaseUrl = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The newest postLinks and how their delivery went."""
    from tolem.notifications import service

    state = "failed" if failed else "pending" if pending else None
    with _migrated(_settings(database_url)) as db, db.read() as session:
        rows = [_row(n) for n in service.listing(session, state=state, limit=limit)]
    if as_json:
        typer.echo(json.dumps(rows))
        return
    table = Table("ID", "Transaction", "State", "Tries", "Last", "URL")
    for row in rows:
        last = row["lastStatus"] or row["lastError"] or ""
        table.add_row(
            row["id"],
            row["transactionId"],
            row["state"],
            str(row["attempts"]),
            str(last),
            row["url"],
        )
    console.print(table)


@notifications_app.command("redeliver")
def notifications_redeliver(
    notification_id: Annotated[str, typer.Argument(help="The notification's id.")],
    database_url: DatabaseUrl = None,
) -> None:
    """Send a postLink again now, with a fresh retry schedule."""
    from tolem.notifications import service

    with _migrated(_settings(database_url)) as db, db.write() as session:
        found = service.redeliver(session, notification_id)
    if not found:
        console.print(f"[red]no notification {notification_id}[/red]")
        raise typer.Exit(1)
    console.print(f"notification {notification_id} will be sent again")


@merchant_app.command("signing")
def merchant_signing(
    client_id: Annotated[str, typer.Argument(help="The merchant's ClientID.")],
    off: Annotated[bool, typer.Option("--off", help="Send unsigned postLinks again.")] = False,
    database_url: DatabaseUrl = None,
) -> None:
    """Sign this merchant's postLinks (Standard Webhooks); prints the new secret once."""
    from tolem.keys import KeyConfigError, load_keyring
    from tolem.merchants.service import find_by_client_id
    from tolem.notifications import signing

    settings = _settings(database_url)
    try:
        keys = load_keyring(settings)
    except KeyConfigError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    secret = "" if off else signing.new_secret()
    with _migrated(settings) as db, db.write() as session:
        merchant = find_by_client_id(session, client_id)
        if merchant is None:
            console.print(f"[red]no merchant with ClientID {client_id}[/red]")
            raise typer.Exit(1)
        merchant.signing_secret = signing.seal(keys.card_key, merchant.id, secret) if secret else ""
    if off:
        console.print(f"postLinks of {client_id} are sent unsigned")
        return
    typer.echo(secret)
