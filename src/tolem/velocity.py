"""Velocity limits, the card-testing defence: how many payment attempts one client
address, one terminal and one card may make in a window. Past a limit the payment is
refused with reason 491 ("Exceeds frequency limit") before it reaches the acquirer.

What counts is what the claim records: every row of ``transactions`` created inside the
window, however it ended (approved, declined, waiting for 3-D Secure). Card testing is
mostly declines, so declines count. A refused attempt records nothing and so does not
count: a caller who keeps trying gets ATTEMPTS per window, never fewer. The client
address and the card are counted per merchant (every query is scoped to its merchant);
a terminal belongs to one merchant anyway. Every way of paying (cryptopay, the hosted
page, saved cards, card verification) runs the claim, so every way is limited.

The counts are read inside the claim's write transaction, from the database, so the
limits hold across worker processes and servers that share it:

- SQLite runs one write transaction at a time (tolem.db.engine): between the count and
  the insert no other claim can commit.
- PostgreSQL lets claims run side by side, so the claim first takes a
  transaction-scoped advisory lock per limited key (``pg_advisory_xact_lock``), always
  in the same order, so claims cannot deadlock on them. Two claims of one client
  address, terminal or card therefore count one after the other; claims that share no
  limited key do not wait for each other. The count runs in a statement after the
  locks, so under READ COMMITTED it sees what the previous holder committed.

Each count reads an index and stops at the limit (``LIMIT attempts``):
``ix_transactions_merchant_ip`` (merchant, ip, created_at) and
``ix_transactions_merchant_card`` (merchant, card fingerprint, created_at) are this
module's (migration 0011; the second replaced the fingerprint's own index, which no
query used), the terminal's count reads the cabinet's ``ix_transactions_merchant_created``
(merchant, created_at, id), walking the merchant's payments of the window.

The runtime builds the gateway's :class:`Limits` from its settings
(:meth:`Limits.from_settings`) and the claim passes them to :func:`check`; with every
limit off the check returns at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, cast

from sqlalchemy import Select, Table, bindparam, func, literal_column, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import Label

from tolem import reasons
from tolem.config import Settings
from tolem.db.base import advisory_lock_key, lock_until_commit, utcnow
from tolem.errors import BadRequest
from tolem.payments.models import Transaction

log = logging.getLogger("tolem.velocity")

#: The reason code of a refused attempt.
REFUSED = 491
#: What production mode limits when a setting is left empty (sandbox mode: nothing).
PRODUCTION_DEFAULTS = {"ip": "20/600", "terminal": "600/60", "card": "5/600"}
#: The limited keys, in the order of the settings and of the counts.
KINDS = ("ip", "terminal", "card")

_TRANSACTIONS = cast(Table, Transaction.__table__)
_COLUMNS = {
    "ip": _TRANSACTIONS.c.ip,
    "terminal": _TRANSACTIONS.c.terminal_id,
    "card": _TRANSACTIONS.c.card_fingerprint,
}


@dataclass(frozen=True)
class Limit:
    """At most ``attempts`` payment attempts per ``seconds``."""

    attempts: int
    seconds: int

    @classmethod
    def parse(cls, value: str) -> Limit | None:
        """``ATTEMPTS/SECONDS`` as the settings hold it; None for ``0`` (off)."""
        if not value or value == "0":
            return None
        attempts, seconds = value.split("/")
        return cls(int(attempts), int(seconds))

    def __str__(self) -> str:
        return f"{self.attempts}/{self.seconds}"


@dataclass(frozen=True)
class Limits:
    """The limits of one gateway; a key whose limit is None is not limited."""

    ip: Limit | None = None
    terminal: Limit | None = None
    card: Limit | None = None
    #: One statement counting every limited key (built once: building costs more than running).
    statement: Select[Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        counts = [_count_of(kind, limit) for kind, limit in self.items()]
        object.__setattr__(self, "statement", select(*counts))

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        def limit(kind: str) -> Limit | None:
            value: str = getattr(settings, f"velocity_{kind}")
            if not value:
                value = "0" if settings.is_sandbox else PRODUCTION_DEFAULTS[kind]
            return Limit.parse(value)

        return cls(ip=limit("ip"), terminal=limit("terminal"), card=limit("card"))

    def items(self) -> list[tuple[str, Limit]]:
        """(kind, limit) of every limit that is on, in the order of KINDS."""
        return [(kind, limit) for kind in KINDS if (limit := getattr(self, kind)) is not None]

    @property
    def off(self) -> bool:
        return not self.items()

    def announce(self) -> None:
        """Log the limits that are on (once, at start-up)."""
        for kind, limit in self.items():
            log.info("velocity limit %s: %s attempts per %s s", kind, limit.attempts, limit.seconds)


def _count_of(kind: str, limit: Limit) -> Label[int]:
    """The attempts of one key within its window, counted up to the limit."""
    recent = (
        select(literal_column("1"))
        .where(
            _TRANSACTIONS.c.merchant_id == bindparam("merchant_id"),
            _COLUMNS[kind] == bindparam(kind),
            _TRANSACTIONS.c.created_at > bindparam(f"{kind}_since"),
        )
        .limit(limit.attempts)
        .subquery()
    )
    return select(func.count()).select_from(recent).scalar_subquery().label(kind)


def check(session: Session, tx: Transaction, limits: Limits) -> None:
    """Refuse the payment being claimed (491) if one of its keys reached its limit.

    Called by the claim in its write transaction, before the payment's row is inserted.
    """
    if limits.off:
        return
    values = {"ip": tx.ip, "terminal": tx.terminal_id, "card": tx.card_fingerprint}
    active = [kind for kind, _limit in limits.items() if values[kind]]
    if not active:
        return
    # PostgreSQL: queue behind the other claims of the same keys until commit.
    lock_until_commit(
        session,
        *(advisory_lock_key("velocity", tx.merchant_id, kind, values[kind]) for kind in active),
    )
    now = utcnow()
    params: dict[str, object] = {"merchant_id": tx.merchant_id}
    for kind, limit in limits.items():
        params[kind] = values[kind]
        params[f"{kind}_since"] = now - timedelta(seconds=limit.seconds)
    counts: tuple[int, ...] = tuple(session.execute(limits.statement, params).one())
    for (kind, limit), count in zip(limits.items(), counts, strict=True):
        if values[kind] and count >= limit.attempts:
            log.warning(
                "velocity limit %s reached (%s attempts per %s s): merchant %s, "
                "terminal %s, ip %s, card %s; invoice %s refused with %s",
                kind,
                limit.attempts,
                limit.seconds,
                tx.merchant_id,
                tx.terminal_id,
                tx.ip,
                tx.card_mask,
                tx.invoice_id,
                REFUSED,
            )
            raise BadRequest(
                reasons.message(REFUSED),
                code=REFUSED,
                invoiceId=tx.invoice_id,
                id="",
                reference="",
                accountId=tx.account_id,
            )
