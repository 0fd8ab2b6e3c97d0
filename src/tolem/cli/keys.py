"""``tolem keys rewrap``: move what was sealed under an earlier card key to the current one.

After ``TOLEM_CARD_KEY`` is rotated (the old value kept in ``TOLEM_CARD_PREVIOUS_KEYS``),
saved cards are re-wrapped one by one as they are used; this command re-wraps all the
others, and seals the merchants' postLink signing secrets again, so that the old key can
be retired. It may run while the gateway serves: each row changes only if it is still
as it was read.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from tolem.cli import DatabaseUrl, _migrated, _settings, app, console

keys_app = typer.Typer(no_args_is_help=True, help="The gateway's keys.")
app.add_typer(keys_app, name="keys")

_BATCH = 500


@keys_app.command("rewrap")
def keys_rewrap(
    database_url: DatabaseUrl = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Re-wrap every saved card and signing secret under the current TOLEM_CARD_KEY.

    Exits with 1 if some could not be opened with the configured keys: the old key must
    not be retired then.
    """
    from sqlalchemy import select, update

    from tolem.cards import service as cards
    from tolem.cards.models import SavedCard
    from tolem.cards.vault import CardVault, VaultError
    from tolem.keys import KeyConfigError, load_keyring
    from tolem.merchants.models import Merchant
    from tolem.notifications import signing

    settings = _settings(database_url)
    try:
        keyring = load_keyring(settings)
    except KeyConfigError as exc:
        console.print(f"[red]tolem cannot rewrap:[/red] {exc}", soft_wrap=True)
        raise typer.Exit(2) from None
    vault = CardVault(keyring.card_key, retired=keyring.card_previous)
    rewrapped = resealed = 0
    failed: list[str] = []  # "card <id>: reason" / "merchant <clientId>: reason"
    with _migrated(settings) as db:
        after = ""
        while True:  # in batches, each its own short write transaction
            with db.write() as session:
                batch = session.scalars(
                    select(SavedCard)
                    .where(
                        SavedCard.id > after,
                        SavedCard.key_id != vault.key_id,
                        SavedCard.sealed != "",
                    )
                    .order_by(SavedCard.id)
                    .limit(_BATCH)
                ).all()
                for card in batch:
                    try:
                        rewrapped += cards.rewrap(session, vault, card)
                    except VaultError as exc:
                        failed.append(f"card {card.id}: {exc}")
            if len(batch) < _BATCH:
                break
            after = batch[-1].id
        with db.write() as session:
            merchants = session.scalars(select(Merchant).where(Merchant.signing_secret != ""))
            for merchant in merchants.all():
                try:
                    fresh = signing.reseal(keyring.card_keys, merchant.id, merchant.signing_secret)
                except signing.SigningSecretError as exc:
                    failed.append(f"merchant {merchant.client_id}: {exc}")
                    continue
                if fresh is not None:
                    done = session.execute(
                        update(Merchant)
                        .where(
                            Merchant.id == merchant.id,
                            Merchant.signing_secret == merchant.signing_secret,
                        )
                        .values(signing_secret=fresh)
                        .execution_options(synchronize_session=False)
                    )
                    resealed += done.rowcount  # type: ignore[attr-defined]
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "keyId": vault.key_id,
                    "cardsRewrapped": rewrapped,
                    "signingSecretsResealed": resealed,
                    "failed": failed,
                }
            )
        )
    else:
        console.print(
            f"{rewrapped} saved cards re-wrapped and {resealed} signing secrets sealed again "
            f"under the card key {vault.key_id}"
        )
        for line in failed:
            console.print(f"[red]cannot open[/red] {line}", soft_wrap=True)
        if failed:
            console.print("[yellow]Keep the earlier card keys until these are dealt with.[/yellow]")
    if failed:
        raise typer.Exit(1)
