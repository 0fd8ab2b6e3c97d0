"""``tolem user create|list|unlock``: the people who log in to the merchant cabinet."""

from __future__ import annotations

import getpass
import json
import sys
from typing import Annotated

import typer
from rich.table import Table

from tolem.cli import DatabaseUrl, _migrated, _settings, app, console

user_app = typer.Typer(no_args_is_help=True, help="Merchant cabinet users.")
app.add_typer(user_app, name="user")


def _read_password() -> str:
    """A hidden prompt (twice) on a terminal; else the first line of standard input."""
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Password again: ") != first:
        console.print("[red]The passwords differ.[/red]")
        raise typer.Exit(2)
    return first


@user_app.command("create")
def create(
    email: Annotated[str, typer.Option(help="The login: an email address.")],
    merchant: Annotated[str, typer.Option(help="The merchant's ClientID.")],
    database_url: DatabaseUrl = None,
) -> None:
    """Create a cabinet user of a merchant. The password is asked at a hidden prompt
    (or read from standard input), never taken from the command line."""
    from tolem.cabinet.passwords import PasswordError
    from tolem.cabinet.users import UserError, create_user

    password = _read_password()
    with _migrated(_settings(database_url)) as db, db.write() as session:
        try:
            user = create_user(session, merchant, email, password)
        except (UserError, PasswordError) as exc:
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(2) from None
        console.print(f"User {user.email} created for merchant {merchant}.")


@user_app.command("list")
def list_users(
    database_url: DatabaseUrl = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Every cabinet user: email, merchant, failed logins, locked until, last login."""
    from sqlalchemy import select

    from tolem.cabinet.models import CabinetUser
    from tolem.merchants.models import Merchant

    with _migrated(_settings(database_url)) as db, db.read() as session:
        rows = session.execute(
            select(CabinetUser, Merchant.client_id)
            .join(Merchant, Merchant.id == CabinetUser.merchant_id)
            .order_by(CabinetUser.email)
        ).all()
        found = [
            {
                "email": user.email,
                "merchant": client_id,
                "failedLogins": user.failed_logins,
                "lockedUntil": user.locked_until.isoformat() if user.locked_until else None,
                "lastLogin": user.last_login_at.isoformat() if user.last_login_at else None,
            }
            for user, client_id in rows
        ]
    if as_json:
        print(json.dumps(found))
        return
    table = Table("Email", "Merchant", "Failed logins", "Locked until", "Last login")
    for row in found:
        table.add_row(
            str(row["email"]),
            str(row["merchant"]),
            str(row["failedLogins"]),
            str(row["lockedUntil"] or ""),
            str(row["lastLogin"] or ""),
        )
    console.print(table)


@user_app.command("unlock")
def unlock_user(email: str, database_url: DatabaseUrl = None) -> None:
    """Lift the lock that wrong passwords put on an account."""
    from tolem.cabinet.users import unlock

    with _migrated(_settings(database_url)) as db, db.write() as session:
        if not unlock(session, email):
            console.print(f"[red]No user {email}.[/red]")
            raise typer.Exit(1)
    console.print(f"{email} unlocked.")
