"""The shop's own tests: a real tolem gateway from the ``tolem_gateway`` fixture.

Run them with ``pytest examples/shop`` once tolem is installed; the fixture comes from
tolem's pytest plugin, no conftest needed.
"""

from __future__ import annotations

import random
from decimal import Decimal

from shop import Shop

from tolem.client import Card
from tolem.testing import Gateway

GOOD_CARD = Card.parse("4405639704015096", "01/25", "815")
NO_FUNDS = Card.parse("5578342710750560", "09/20", "254")  # declines with 484


def new_invoice() -> str:
    return str(random.randrange(10**11, 10**12))


def test_checkout_then_postlink_then_capture(tolem_gateway: Gateway) -> None:
    shop = Shop(tolem_gateway.client, post_link=tolem_gateway.postlinks.url_for("epay"))
    invoice = new_invoice()

    order = shop.checkout(invoice, Decimal("1500.00"), GOOD_CARD)
    assert order.state == "authorized"

    # The gateway really POSTs the notification; hand it to the shop's handler.
    (delivered,) = tolem_gateway.postlinks.wait(invoice)
    assert delivered.path == "/epay"
    assert shop.handle_postlink(delivered.body) == 200
    assert order.state == "paid"

    shop.capture(invoice)
    status = tolem_gateway.client.status(invoice)
    assert status.status == "CHARGE"
    assert status.amount == Decimal("1500")


def test_a_declined_card_leaves_the_order_unpaid(tolem_gateway: Gateway) -> None:
    shop = Shop(tolem_gateway.client, post_link=tolem_gateway.postlinks.url)
    invoice = new_invoice()

    order = shop.checkout(invoice, Decimal("700"), NO_FUNDS)

    assert order.state == "declined"
    assert order.decline_reason == "Недостаточно средств"
    postlink = tolem_gateway.postlinks.wait_for(invoice)
    assert not postlink.approved and postlink.reason_code == 484
    assert shop.handle_postlink(tolem_gateway.postlinks.wait(invoice)[0].body) == 200
    assert order.state == "declined"


def test_a_forged_postlink_is_refused(tolem_gateway: Gateway) -> None:
    shop = Shop(tolem_gateway.client, post_link=tolem_gateway.postlinks.url)
    invoice = new_invoice()
    shop.checkout(invoice, Decimal("100"), GOOD_CARD)
    body = tolem_gateway.postlinks.wait(invoice)[0].body

    forged = body.replace(shop.secret_hash.encode(), b"guessed")

    assert shop.handle_postlink(forged) == 403
