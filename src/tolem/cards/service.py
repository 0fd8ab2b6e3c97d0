"""Saving cards: held with their payment, kept only if the payment succeeds.

A card to save is sealed when its payment is claimed (the only moment tolem holds the
card number: after 3-D Secure there is no card data left to save) and stays pending.
When the payment is decided, :func:`settle` runs in the same transaction: approved,
the card becomes active and its id is the payment's cardID; declined or expired, the
sealed card is deleted.
"""

from __future__ import annotations

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from tolem.cards.models import CardState, SavedCard
from tolem.cards.vault import CardVault, SealedCard
from tolem.db.base import advisory_lock_key, lock_until_commit, new_id, utcnow
from tolem.payments.models import Transaction
from tolem.processor.base import Card


def hold(session: Session, vault: CardVault, tx: Transaction, card: Card) -> SavedCard:
    """Seal the card of a payment being claimed; pending until the payment is decided."""
    card_id = new_id()
    sealed = vault.seal(card, bound_to=card_id)
    saved = SavedCard(
        id=card_id,
        merchant_id=tx.merchant_id,
        terminal_id=tx.terminal_id,
        account_id=tx.account_id,
        transaction_id=tx.id,
        state=CardState.PENDING.value,
        card_mask=tx.card_mask,
        card_fingerprint=tx.card_fingerprint,
        card_type=tx.card_type,
        payer_name=tx.payer_name,
        key_id=sealed.key_id,
        sealed=sealed.blob,
    )
    session.add(saved)
    return saved


# Built once: every payment runs it, and building a statement costs more than running it.
_PENDING_OF = select(SavedCard).where(
    SavedCard.transaction_id == bindparam("transaction_id"),
    SavedCard.state == CardState.PENDING.value,
)


def settle(session: Session, tx: Transaction, *, approved: bool) -> str:
    """Keep or drop the card held by this payment; the cardID, or "" if none."""
    pending = session.scalars(_PENDING_OF, {"transaction_id": tx.id}).first()
    if pending is None:
        return ""
    if not approved:
        session.delete(pending)  # nothing of a failed payment's card is kept
        return ""
    # The same customer saving the same card again gets the card id they already have.
    _one_owner_at_a_time(session, tx)
    existing = session.scalars(
        select(SavedCard).where(
            SavedCard.merchant_id == tx.merchant_id,
            SavedCard.account_id == tx.account_id,
            SavedCard.card_fingerprint == tx.card_fingerprint,
            SavedCard.state == CardState.ACTIVE.value,
        )
    ).first()
    if existing is not None:
        session.delete(pending)
        return existing.id
    pending.state = CardState.ACTIVE.value
    pending.updated_at = utcnow()
    return pending.id


def _one_owner_at_a_time(session: Session, tx: Transaction) -> None:
    """Make settles of one customer's card (merchant, account, card) wait for each other
    until commit, so that the second one sees the card the first one kept.

    Without it, payments of one customer with one card decided at once in several
    processes each found no active card and each kept its own: one card, several
    cardIDs. PostgreSQL: a transaction-level advisory lock (each statement of READ
    COMMITTED reads what committed before it, so the lookup after the wait sees the
    winner's card). SQLite writes one transaction at a time already.
    """
    lock_until_commit(
        session,
        advisory_lock_key("saved-card", tx.merchant_id, tx.account_id, tx.card_fingerprint),
    )


def active_card(session: Session, merchant_id: str, card_id: str) -> SavedCard | None:
    """The merchant's usable card with this id (another merchant's is not found)."""
    card = session.get(SavedCard, card_id) if 0 < len(card_id) <= 36 else None
    if card is None or card.merchant_id != merchant_id or card.state != CardState.ACTIVE.value:
        return None
    return card


def cards_of(session: Session, merchant_id: str, account_id: str) -> list[SavedCard]:
    return list(
        session.scalars(
            select(SavedCard)
            .where(
                SavedCard.merchant_id == merchant_id,
                SavedCard.account_id == account_id,
                SavedCard.state == CardState.ACTIVE.value,
            )
            .order_by(SavedCard.created_at)
        )
    )


def deactivate(session: Session, merchant_id: str, card_id: str) -> bool:
    card = active_card(session, merchant_id, card_id)
    if card is None:
        return False
    card.state = CardState.DEACTIVATED.value
    card.sealed = ""  # nothing of a deactivated card's number is kept
    card.updated_at = utcnow()
    return True


def rewrap(session: Session, vault: CardVault, card: SavedCard) -> bool:
    """Re-wrap a card sealed under an earlier card key with the current one.

    True if this call re-wrapped it. The row changes only if it is still as it was read:
    a card deactivated (or re-wrapped) meanwhile is left alone. A row that does not open
    raises :class:`tolem.cards.vault.VaultError`.
    """
    if not card.sealed or card.key_id == vault.key_id:
        return False
    fresh = vault.rewrap(SealedCard(card.key_id, card.sealed), bound_to=card.id)
    done = session.execute(
        update(SavedCard)
        .where(
            SavedCard.id == card.id,
            SavedCard.key_id == card.key_id,
            SavedCard.sealed == card.sealed,
        )
        .values(key_id=fresh.key_id, sealed=fresh.blob)
        .execution_options(synchronize_session=False)
    )
    return bool(done.rowcount)  # type: ignore[attr-defined]
