"""Every table, imported in one place so that metadata and migrations see them all."""

from tolem.cabinet.models import CabinetSession, CabinetUser
from tolem.cards.models import SavedCard
from tolem.db.base import Base
from tolem.idempotency import IdempotencyKey
from tolem.merchants.models import Merchant, Terminal
from tolem.notifications.models import DeliveryAttempt, Notification
from tolem.payments.models import Operation, Transaction, TransactionEvent
from tolem.processor.simulator import AcsSession, LedgerEntry

__all__ = [
    "AcsSession",
    "Base",
    "CabinetSession",
    "CabinetUser",
    "DeliveryAttempt",
    "IdempotencyKey",
    "LedgerEntry",
    "Merchant",
    "Notification",
    "Operation",
    "SavedCard",
    "Terminal",
    "Transaction",
    "TransactionEvent",
]
