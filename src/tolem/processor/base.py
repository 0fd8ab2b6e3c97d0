"""The acquirer interface: what tolem asks of whoever moves the money.

Every call carries an idempotency ``reference`` chosen by tolem (the transaction id,
plus an operation suffix for later operations). Calling again with the same
reference must return the first answer and move no money twice; the recovery sweep
of production mode relies on that.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Card:
    """Card data in memory only, for the length of one authorization."""

    pan: str
    exp_month: int
    exp_year: int  # four digits
    cvc: str  # "" for a saved card, charged on file

    def __repr__(self) -> str:  # never let a PAN or CVC reach a log by accident
        return f"Card(pan={self.pan[:6]}...{self.pan[-4:]}, cvc=***)"


class Secure3DPolicy:
    """When a terminal asks for 3-D Secure: always, never, or as the card's issuer says."""

    ALWAYS = "always"
    NEVER = "never"
    CARD = "card"
    ALL = (ALWAYS, NEVER, CARD)


@dataclass(frozen=True, slots=True)
class AuthorizationRequest:
    reference: str
    terminal_id: str
    amount: Decimal
    currency: str
    card: Card
    capture: bool  # one-step terminals authorize and capture together
    secure3d: str = Secure3DPolicy.CARD
    merchant_name: str = ""  # shown by the issuer's 3-D Secure page
    language: str = "rus"
    verify: bool = False  # card verification: check the card, move no money (amount 0)


@dataclass(frozen=True, slots=True)
class Challenge:
    """3-D Secure needed: post PaReq and MD to ``action`` with a TermUrl."""

    pa_req: str
    md: str
    action: str


@dataclass(frozen=True, slots=True)
class ProcessorResult:
    approved: bool
    reason_code: int  # 0 when approved
    rrn: str = ""  # 12-digit retrieval reference number
    approval_code: str = ""  # 6 digits
    int_reference: str = ""
    issuer: str = ""
    challenge: Challenge | None = None  # set when the cardholder must authenticate first


class AuthenticationRefused(Exception):
    """A PaRes the acquirer will not act on (forged, another payment's, expired).

    Nothing changes: the payment still waits for a genuine answer from the ACS.
    """

    def __init__(self, reason_code: int, message: str) -> None:
        super().__init__(message)
        self.reason_code = reason_code
        self.message = message


class Acquirer(Protocol):
    """What a real acquirer connector implements. The simulator is one.

    A connector may also declare ``max_call_seconds`` (a number): the longest one call
    to it can take, its own timeout. The recovery sweep (tolem.recovery) leaves a
    payment or operation in progress alone for twice that plus 5 seconds before it
    asks :meth:`inquire` (30 seconds are assumed when it is not declared).
    """

    def authorize(self, request: AuthorizationRequest) -> ProcessorResult: ...

    def capture(self, reference: str, auth_reference: str, amount: Decimal) -> ProcessorResult: ...

    def void(self, reference: str, auth_reference: str) -> ProcessorResult: ...

    def refund(self, reference: str, auth_reference: str, amount: Decimal) -> ProcessorResult: ...

    def complete_authentication(self, reference: str, pa_res: str, md: str) -> ProcessorResult:
        """Finish a payment that answered with a :class:`Challenge`.

        Raises :class:`AuthenticationRefused` for a PaRes it will not act on; returns
        the final outcome otherwise (a 3-D Secure failure is a declined result).
        """
        ...

    def inquire(self, reference: str) -> ProcessorResult | None:
        """What became of a call with this reference; None if the acquirer never saw it.

        The recovery sweep settles transactions left in progress by a crash with this,
        never by sending the request again.
        """
        ...
