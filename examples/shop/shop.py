"""A tiny shop's payment code, written against tolem's SDK.

It is the example of docs/sdk.md: the checkout takes the card on the shop's server
(host-to-host, which needs PCI DSS on the live service), and the postLink handler
marks the order paid only when the notification carries the shop's secret_hash.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from decimal import Decimal

from tolem.client import (
    Card,
    EpayClient,
    PaymentDeclined,
    PaymentRequest,
    check_secret_hash,
    parse_postlink,
)


@dataclass
class Order:
    invoice_id: str
    amount: Decimal
    state: str = "new"  # new → authorized | declined → paid
    transaction_id: str = ""
    decline_reason: str = ""


@dataclass
class Shop:
    epay: EpayClient
    post_link: str
    secret_hash: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    orders: dict[str, Order] = field(default_factory=dict)

    def checkout(self, invoice_id: str, amount: Decimal, card: Card) -> Order:
        order = self.orders.setdefault(invoice_id, Order(invoice_id, amount))
        request = PaymentRequest(
            invoice_id=invoice_id,
            amount=amount,
            description=f"Order {invoice_id}",
            name="JON JONSON",
            post_link=self.post_link,
            secret_hash=self.secret_hash,
        )
        try:
            payment = self.epay.pay(request, card)
        except PaymentDeclined as declined:
            order.state, order.decline_reason = "declined", declined.message_ru
            return order
        order.transaction_id = payment.id
        order.state = "authorized"
        return order

    def handle_postlink(self, body: bytes) -> int:
        """The shop's postLink endpoint: the HTTP status it answers."""
        postlink = parse_postlink(body)
        if not check_secret_hash(postlink, self.secret_hash):
            return 403
        order = self.orders.get(postlink.invoice_id)
        if order is None:
            return 404
        if postlink.approved and postlink.amount == order.amount:
            order.transaction_id = postlink.id
            order.state = "paid"
        return 200

    def capture(self, invoice_id: str) -> Order:
        """Ship the goods: charge the authorized amount."""
        order = self.orders[invoice_id]
        self.epay.charge(order.transaction_id)
        order.state = "charged"
        return order
