"""The postLink body, exactly as EPAY.md section 10 shows it.

Types matter to shops' decoders: ``amount`` and ``reasonCode`` are numbers, ``secure``
is "yes" or "no", ``dateTime`` is RFC 3339 with nanoseconds in Kazakhstan's +05:00,
``ipLatitude``/``ipLongitude`` are numbers. A failure leaves the approval code, card
id, card mask, card type and reference empty, as ePay's failure example does.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from tolem import reasons
from tolem.payments.models import Status, Transaction

#: Where ePay's postLink words a reason differently from its reason-code table
#: (EPAY.md section 10's failure example: 473 is "Authentication failed").
_POSTLINK_REASONS = {473: "Authentication failed"}

#: ePay stamps postLinks in Almaty time.
ALMATY = timezone(timedelta(hours=5))


def date_time(moment: datetime) -> str:
    """``2025-02-12T09:42:51.960781000+05:00``: nanoseconds, as the live service writes."""
    local = moment.astimezone(ALMATY)
    return f"{local:%Y-%m-%dT%H:%M:%S}.{local.microsecond:06d}000+05:00"


def postlink_body(tx: Transaction, moment: datetime) -> dict[str, Any]:
    ok = Status(tx.status).succeeded
    return {
        "accountId": tx.account_id,
        "amount": tx.amount,
        "approvalCode": tx.approval_code if ok else "",
        "cardId": tx.card_id if ok else "",
        "cardMask": tx.card_mask if ok else "",
        "cardType": tx.card_type if ok else "",
        "code": "ok" if ok else "error",
        "currency": tx.currency,
        "dateTime": date_time(moment),
        "description": tx.description,
        "email": tx.email,
        "id": tx.id,
        "invoiceId": tx.invoice_id,
        "ip": tx.ip,
        "ipCity": "",
        "ipCountry": "",
        "ipDistrict": "",
        "ipLatitude": 0,
        "ipLongitude": 0,
        "ipRegion": "",
        "issuer": tx.issuer,
        "language": tx.language.upper(),
        "name": tx.payer_name,
        "phone": tx.phone,
        "reason": "success"
        if ok
        else _POSTLINK_REASONS.get(tx.reason_code) or reasons.message(tx.reason_code),
        "reasonCode": 0 if ok else tx.reason_code,
        "reference": tx.reference if ok else "",
        "secret_hash": tx.secret_hash,
        "secure": "yes" if tx.secure else "no",
        "secureDetails": "F" if tx.secure else "",
        "terminal": tx.terminal_id,
    }
