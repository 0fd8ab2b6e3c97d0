"""The ``tolem`` command."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from tolem.config import Mode, Settings
from tolem.db.engine import Database

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="tolem: an ePay gateway.",
)
merchant_app = typer.Typer(no_args_is_help=True, help="Merchants and their credentials.")
db_app = typer.Typer(no_args_is_help=True, help="The database schema.")
app.add_typer(merchant_app, name="merchant")
app.add_typer(db_app, name="db")

console = Console()

DatabaseUrl = Annotated[
    str | None,
    typer.Option("--database-url", help="SQLAlchemy URL (env TOLEM_DATABASE_URL)."),
]


def _settings(database_url: str | None = None, **overrides: object) -> Settings:
    from pydantic import ValidationError

    values = {k: v for k, v in overrides.items() if v is not None}
    if database_url:
        values["database_url"] = database_url
    try:
        return Settings(**values)  # type: ignore[arg-type]
    except ValidationError as exc:  # a wrong setting: say which, without a traceback
        for error in exc.errors():
            name = "TOLEM_" + "_".join(str(part) for part in error["loc"]).upper()
            console.print(f"[red]tolem cannot start:[/red] {name}: {error['msg']}", soft_wrap=True)
        raise typer.Exit(2) from None


def _data_dir(settings: Settings) -> None:
    # Owner-only: the database and the sandbox keys live here.
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)


def _database(settings: Settings) -> Database:
    if settings.effective_database_url.startswith("sqlite"):
        _data_dir(settings)
    return Database(settings.effective_database_url, sqlite_synchronous=settings.sqlite_synchronous)


@contextmanager
def _migrated(settings: Settings) -> Iterator[Database]:
    """The database, brought to the newest schema first; disposed of afterwards."""
    from tolem.db.migrate import upgrade

    db = _database(settings)
    try:
        upgrade(db)
        yield db
    finally:
        db.dispose()


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (env TOLEM_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (env TOLEM_PORT).")] = None,
    database_url: DatabaseUrl = None,
    workers: Annotated[
        int | None, typer.Option(help="Worker processes (env TOLEM_WORKERS).")
    ] = None,
    mode: Annotated[
        Mode | None, typer.Option(help="sandbox or production (env TOLEM_MODE).")
    ] = None,
) -> None:
    """Run the gateway."""
    import uvicorn

    from tolem.db.migrate import prepare_database
    from tolem.keys import KeyConfigError, load_keyring
    from tolem.logs import configure_logging
    from tolem.processor import AcquirerConfigError, load_acquirer
    from tolem.production import ProductionError, check_settings

    settings = _settings(database_url, host=host, port=port, workers=workers, mode=mode)
    configure_logging(settings)
    _data_dir(settings)
    db = _database(settings)
    try:
        # Fail here, once and clearly, not in every worker.
        if not settings.is_sandbox:
            check_settings(settings)
        load_keyring(settings)  # sandbox: generates the keys before workers start
        load_acquirer(settings, db)
        prepare_database(db, sandbox=settings.is_sandbox)
    except (KeyConfigError, AcquirerConfigError, ProductionError) as exc:
        console.print(f"[red]tolem cannot start:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(2) from None
    finally:
        db.dispose()
    # Workers read their settings from the environment.
    os.environ.update(_environment(settings))
    uvicorn.run(
        "tolem.app:worker_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_config=None,
        access_log=settings.access_log,
        # X-Forwarded-For/-Proto only from the TLS proxy's addresses, and only if named.
        proxy_headers=bool(settings.forwarded_allow_ips),
        forwarded_allow_ips=settings.forwarded_allow_ips or None,
        timeout_graceful_shutdown=10,
    )


def _environment(settings: Settings) -> dict[str, str]:
    env = {}
    for name, value in settings.model_dump(exclude_none=True).items():
        if name in ("token_key", "fingerprint_key", "card_key") and not value:
            continue
        env[f"TOLEM_{name.upper()}"] = str(value.value if isinstance(value, Mode) else value)
    env["TOLEM_DATA_DIR"] = str(settings.data_dir.resolve())
    env["TOLEM_DATABASE_URL"] = settings.effective_database_url
    return env


@db_app.command("upgrade")
def db_upgrade(database_url: DatabaseUrl = None) -> None:
    """Apply every migration."""
    with _migrated(_settings(database_url)):
        pass
    console.print("database is at the newest revision")


@merchant_app.command("create")
def merchant_create(
    name: Annotated[str, typer.Option("--name", help="Shop name.")],
    one_step: Annotated[
        bool, typer.Option("--one-step", help="Charge at once (status CHARGE), not AUTH.")
    ] = False,
    test_terminal: Annotated[
        bool,
        typer.Option(
            "--test-terminal",
            help="Pay through the simulator even in production mode (always so in sandbox).",
        ),
    ] = False,
    secure3d: Annotated[
        str,
        typer.Option(
            "--secure3d",
            help="When to ask for 3-D Secure: card (as the issuer says), always, never.",
        ),
    ] = "card",
    database_url: DatabaseUrl = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Create a merchant; prints its ClientID, ClientSecret and TerminalID once."""
    from tolem.merchants.service import create_merchant

    settings = _settings(database_url)
    with _migrated(settings) as db:
        try:
            with db.write() as session:
                creds = create_merchant(
                    session,
                    name,
                    two_step=not one_step,
                    is_test=settings.is_sandbox or test_terminal,
                    secure3d=secure3d,
                )
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from exc
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "merchantId": creds.merchant_id,
                    "name": creds.name,
                    "clientId": creds.client_id,
                    "clientSecret": creds.client_secret,
                    "terminalId": creds.terminal_id,
                }
            )
        )
        return
    console.print(f"Merchant [bold]{creds.name}[/bold] created.")
    console.print(f"  ClientID      {creds.client_id}")
    console.print(f"  ClientSecret  {creds.client_secret}")
    console.print(f"  TerminalID    {creds.terminal_id}")
    console.print("[yellow]The ClientSecret is shown only now; tolem keeps only a hash.[/yellow]")


@merchant_app.command("list")
def merchant_list(
    database_url: DatabaseUrl = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List merchants and their terminals."""
    from tolem.merchants.service import list_merchants

    with _migrated(_settings(database_url)) as db, db.read() as session:
        rows: list[dict[str, Any]] = [
            {
                "name": m.name,
                "clientId": m.client_id,
                "created": m.created_at.isoformat(),
                "terminals": [
                    {
                        "id": t.id,
                        "twoStep": t.two_step,
                        "secure3d": t.secure3d,
                        "currencies": t.currencies.split(),
                    }
                    for t in terminals
                ],
            }
            for m, terminals in list_merchants(session)
        ]
    if as_json:
        typer.echo(json.dumps(rows))
        return
    table = Table("Name", "ClientID", "TerminalID", "Steps", "3-D Secure", "Currencies")
    for row in rows:
        for terminal in row["terminals"]:
            table.add_row(
                str(row["name"]),
                str(row["clientId"]),
                terminal["id"],
                "two" if terminal["twoStep"] else "one",
                terminal["secure3d"],
                " ".join(terminal["currencies"]),
            )
    console.print(table)


@app.command()
def cards(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Every simulator card and trigger: PAN, expiry, CVC and outcome."""
    from tolem.processor.cards import catalogue

    rows = [
        {
            "pan": c.pan,
            "expiry": c.expiry,
            "cvc": c.cvc,
            "outcome": c.outcome,
            "reasonCode": c.reason_code,
            "reason": c.reason,
            "threeDSecure": c.three_ds,
            "note": c.note,
        }
        for c in catalogue()
    ]
    if as_json:
        typer.echo(json.dumps(rows, ensure_ascii=False))
        return
    table = Table("PAN", "Expiry", "CVC", "Outcome", "Code", "3DS", "Note")
    for row in rows:
        table.add_row(
            str(row["pan"]),
            str(row["expiry"]),
            str(row["cvc"]),
            str(row["outcome"]),
            str(row["reasonCode"]),
            "yes" if row["threeDSecure"] else "no",
            str(row["note"]),
        )
    console.print(table)
    console.print(
        "Any other card: Luhn (471), expiry format (457) and date (478), CVC format (477), "
        "then approve."
    )


def main() -> None:
    app()


# The commands of other modules register themselves on ``app`` when imported.
from tolem.cli import keys as _keys  # noqa: E402, F401
from tolem.cli import notifications as _notifications  # noqa: E402, F401
from tolem.cli import payments as _payments  # noqa: E402, F401
from tolem.cli import users as _users  # noqa: E402, F401
