"""The simulator's cards: ePay's published test cards and one trigger card per reason code.

3-D Secure cards (``THREE_DS``) ask for the issuer's challenge first.

Trigger scheme: ``40000000`` + the reason code in four digits + ``000`` + a Luhn
check digit, e.g. ``4000000004840007`` declines with 484 (insufficient funds). Any
expiry and any CVC; ``tolem cards`` prints them all.
"""

from __future__ import annotations

from dataclasses import dataclass

from tolem import reasons
from tolem.carddata import luhn_complete

#: A listed card presented with the right expiry but another CVC declines with this.
WRONG_CVC = 456
#: A listed card presented with an expiry it does not have declines with this.
WRONG_EXPIRY = 457

TRIGGER_PREFIX = "40000000"


@dataclass(frozen=True, slots=True)
class SimulatorCard:
    pan: str
    expiry: str  # MM/YY, or "any"
    cvc: str  # or "any"
    reason_code: int  # 0 approves
    three_ds: bool
    note: str

    @property
    def outcome(self) -> str:
        return "approve" if self.reason_code == 0 else "decline"

    @property
    def reason(self) -> str:
        return reasons.message(self.reason_code)


# ePay's published test cards (EPAY.md section 2): each listed expiry/CVC pair keeps
# its outcome whatever today's date is.
PUBLISHED: tuple[SimulatorCard, ...] = (
    SimulatorCard("4405639704015096", "01/25", "815", 0, False, "ePay test Visa"),
    SimulatorCard("4405639704015096", "01/27", "321", 0, False, "ePay test Visa, newer pages"),
    SimulatorCard("5522042705066736", "01/25", "525", 0, False, "ePay test Mastercard"),
    SimulatorCard("5522042705066736", "01/27", "775", 0, False, "ePay test Mastercard, newer"),
    SimulatorCard("377514500004820", "01/25", "4169", 487, False, "ePay test Amex, 'lock'"),
    SimulatorCard("377514500004820", "01/28", "0198", 0, False, "ePay test Amex, newer pages"),
    SimulatorCard("4003032704547597", "09/20", "170", 465, False, "ePay test Visa, 'lock'"),
    SimulatorCard("5578342710750560", "09/20", "254", 484, False, "ePay test Mastercard, 'lock'"),
)

_PUBLISHED_BY_PAN: dict[str, tuple[SimulatorCard, ...]] = {}
for _card in PUBLISHED:
    _PUBLISHED_BY_PAN[_card.pan] = (*_PUBLISHED_BY_PAN.get(_card.pan, ()), _card)


def trigger_pan(code: int) -> str:
    return luhn_complete(f"{TRIGGER_PREFIX}{code:04d}000")


TRIGGERS: tuple[SimulatorCard, ...] = tuple(
    SimulatorCard(trigger_pan(code), "any", "any", code, False, f"trigger: {text}")
    for code, text in sorted(reasons.REASONS.items())
)

_TRIGGER_CODES: dict[str, int] = {card.pan: card.reason_code for card in TRIGGERS}

# Cards whose issuer asks for 3-D Secure. After a passed challenge each answers with its
# code; a failed challenge declines with 473 (or 499 after three wrong codes).
THREE_DS: tuple[SimulatorCard, ...] = (
    SimulatorCard(
        luhn_complete("400000300000000"),
        "any",
        "any",
        0,
        True,
        "3-D Secure Visa: approves after the challenge",
    ),
    SimulatorCard(
        luhn_complete("520000300000000"),
        "any",
        "any",
        0,
        True,
        "3-D Secure Mastercard: approves after the challenge",
    ),
    SimulatorCard(
        luhn_complete("400000300000484"),
        "any",
        "any",
        484,
        True,
        "3-D Secure Visa: authenticates, then insufficient funds",
    ),
    SimulatorCard(
        luhn_complete("520000300000465"),
        "any",
        "any",
        465,
        True,
        "3-D Secure Mastercard: authenticates, then card restricted",
    ),
)

_THREE_DS_CODES: dict[str, int] = {card.pan: card.reason_code for card in THREE_DS}


def published(pan: str) -> tuple[SimulatorCard, ...]:
    return _PUBLISHED_BY_PAN.get(pan, ())


def trigger_code(pan: str) -> int | None:
    return _TRIGGER_CODES.get(pan)


def three_ds_code(pan: str) -> int | None:
    """The post-authentication code of a 3-D Secure card; None for other cards."""
    return _THREE_DS_CODES.get(pan)


def catalogue() -> tuple[SimulatorCard, ...]:
    """Every card the simulator knows, for ``tolem cards`` and the docs."""
    return PUBLISHED + THREE_DS + TRIGGERS
