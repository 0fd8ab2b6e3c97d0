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
    cvc: str

    def __repr__(self) -> str:  # never let a PAN or CVC reach a log by accident
        return f"Card(pan={self.pan[:6]}...{self.pan[-4:]}, cvc=***)"


@dataclass(frozen=True, slots=True)
class AuthorizationRequest:
    reference: str
    terminal_id: str
    amount: Decimal
    currency: str
    card: Card
    capture: bool  # one-step terminals authorize and capture together


@dataclass(frozen=True, slots=True)
class ProcessorResult:
    approved: bool
    reason_code: int  # 0 when approved
    rrn: str = ""  # 12-digit retrieval reference number
    approval_code: str = ""  # 6 digits
    int_reference: str = ""
    issuer: str = ""


class Acquirer(Protocol):
    """What a real acquirer connector implements. The simulator is one."""

    def authorize(self, request: AuthorizationRequest) -> ProcessorResult: ...

    def capture(self, reference: str, auth_reference: str, amount: Decimal) -> ProcessorResult: ...

    def void(self, reference: str, auth_reference: str) -> ProcessorResult: ...

    def refund(self, reference: str, auth_reference: str, amount: Decimal) -> ProcessorResult: ...

    def inquire(self, reference: str) -> ProcessorResult | None:
        """What became of a call with this reference; None if the acquirer never saw it.

        The recovery sweep settles transactions left in progress by a crash with this,
        never by sending the request again.
        """
        ...
