"""A property-based model of a payment's life cycle (issue 6; EPAY.md sections 8 and 11).

Hypothesis drives random sequences of pay, charge, cancel, refund and status against a
real ``tolem serve`` over HTTP, on SQLite and PostgreSQL, and keeps a model of every
transaction (status, authorised, charged, refunded). After every step it checks:

- the HTTP answer is what the model predicts (200, or 400 with code 100 and the reason);
- never charged more than authorised, never refunded more than charged (in the database);
- the status API (check-status and the legacy ``/operation/{invoiceId}``) agrees with
  the model, and so does the database row (no refund left pending, no operation lock).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tests.support import Gateway, cryptopay, new_invoice, payment_body, token

APPROVE = ("4405639704015096", "0125", "815")
DECLINE = ("5578342710750560", "0920", "254")  # 484: insufficient funds
MIN_REFUND = Decimal("10")
ZERO = Decimal("0.00")

SETTINGS = settings(
    max_examples=25,
    stateful_step_count=15,
    deadline=None,
    database=None,  # nothing written into the work tree
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@dataclass
class Tx:
    """What the model knows of one payment."""

    id: str
    invoice: str
    amount: Decimal  # what was asked for; authorised when the payment was approved
    status: str  # AUTH, FAILED, CHARGE, CANCEL, REFUND
    charged: Decimal = ZERO
    refunded: Decimal = ZERO
    #: The operations done: (kind, amount, externalID), each with its postLink.
    done: list[tuple[str, Decimal, str]] = field(default_factory=list)

    @property
    def left(self) -> Decimal:
        return self.charged - self.refunded


def _money(minor_units: int) -> Decimal:
    return Decimal(minor_units).scaleb(-2)


def _minor(amount: Decimal) -> int:
    return int(amount * 100)


def _body(response: httpx.Response) -> Any:
    """A JSON answer with its numbers read exactly."""
    return json.loads(response.text, parse_float=Decimal)


def _expect_refusal(response: httpx.Response, reason: str) -> None:
    assert response.status_code == 400, response.text
    body = _body(response)
    assert body["code"] == 100, response.text
    assert reason in body["message"], (reason, response.text)


@pytest.fixture
def engine(gateway: Gateway) -> Iterator[sa.Engine]:
    eng = sa.create_engine(gateway.database_url)
    yield eng
    eng.dispose()


def test_random_operation_sequences_follow_the_model(gateway: Gateway, engine: sa.Engine) -> None:
    with gateway.client() as client:
        service = {"Authorization": f"Bearer {token(client)['access_token']}"}

        class LifeCycle(RuleBasedStateMachine):
            def __init__(self) -> None:
                super().__init__()
                self.model: dict[str, Tx] = {}

            # -- steps -------------------------------------------------------------

            @rule(
                tenge=st.integers(100, 5000),
                # Mostly approved: declined payments only ever refuse what follows.
                approve=st.sampled_from([True, True, True, False]),
            )
            def pay(self, tenge: int, approve: bool) -> None:
                invoice = new_invoice()
                amount = Decimal(tenge)
                tok = token(client, invoice=invoice, amount=tenge)["access_token"]
                card = APPROVE if approve else DECLINE
                answer = cryptopay(
                    client, tok, payment_body(gateway, invoice, amount=tenge, card=card)
                )
                body = _body(answer)
                if approve:
                    assert answer.status_code == 200, answer.text
                    assert (body["code"], body["status"], body["invoiceID"]) == (
                        0,
                        "AUTH",
                        invoice,
                    )
                    assert body["amount"] == amount and body["secure3D"] is None
                    tx = Tx(body["id"], invoice, amount, "AUTH")
                else:
                    assert answer.status_code == 400, answer.text
                    assert (body["code"], body["invoiceId"]) == (484, invoice), answer.text
                    assert len(body["id"]) == 36
                    tx = Tx(body["id"], invoice, amount, "FAILED")
                self.model[tx.id] = tx

            def _having(self, status: str) -> list[Tx]:
                # In the order paid: server-made ids would make the drawing irreproducible.
                return [tx for tx in self.model.values() if tx.status == status]

            # Each operation on a transaction in the status it needs (with amounts good and
            # bad), and any operation on any transaction (mostly refused for its status).

            @precondition(lambda self: self._having("AUTH"))
            @rule(data=st.data())
            def charge(self, data: st.DataObject) -> None:
                tx = data.draw(st.sampled_from(self._having("AUTH")), label="transaction")
                self._charge(tx, data)

            @precondition(lambda self: self._having("AUTH"))
            @rule(data=st.data())
            def cancel(self, data: st.DataObject) -> None:
                tx = data.draw(st.sampled_from(self._having("AUTH")), label="transaction")
                self._cancel(tx, data)

            @precondition(lambda self: self._having("CHARGE"))
            @rule(data=st.data())
            def refund(self, data: st.DataObject) -> None:
                tx = data.draw(st.sampled_from(self._having("CHARGE")), label="transaction")
                self._refund(tx, data)

            @precondition(lambda self: self.model)
            @rule(data=st.data(), kind=st.sampled_from(["charge", "cancel", "refund"]))
            def any_operation(self, data: st.DataObject, kind: str) -> None:
                tx = data.draw(st.sampled_from(list(self.model.values())), label="transaction")
                {"charge": self._charge, "cancel": self._cancel, "refund": self._refund}[kind](
                    tx, data
                )

            def _charge(self, tx: Tx, data: st.DataObject) -> None:
                top = _minor(tx.amount)
                amount = data.draw(
                    st.one_of(
                        st.none(),  # the whole amount
                        st.just(top).map(_money),  # the whole amount, said
                        st.integers(1, top).map(_money),  # partial
                        st.integers(1, 2000).map(_money),  # partial, small: refunds of < 10
                        st.integers(top + 1, top + 100_000).map(_money),  # too much
                    ),
                    label="amount",
                )
                how = data.draw(st.sampled_from(["query", "json"]), label="how")
                answer = self._operate(tx.id, "charge", amount, how)
                if tx.status != "AUTH":
                    _expect_refusal(
                        answer, f"charge needs status AUTH; the transaction is {tx.status}"
                    )
                    return
                if amount is not None and amount > tx.amount:
                    _expect_refusal(answer, "amount must be more than 0 and at most")
                    return
                charged = tx.amount if amount is None else amount
                self._expect_success(answer, tx, "CHARGE", charged, charged, ZERO)
                tx.status, tx.charged = "CHARGE", charged
                tx.done.append(("charge", charged, ""))

            def _cancel(self, tx: Tx, data: st.DataObject) -> None:
                with_amount = data.draw(st.sampled_from([False, False, True]), label="with_amount")
                amount = tx.amount if with_amount else None
                answer = self._operate(tx.id, "cancel", amount, "query")
                if tx.status != "AUTH":
                    _expect_refusal(
                        answer, f"cancel needs status AUTH; the transaction is {tx.status}"
                    )
                    return
                if with_amount:
                    _expect_refusal(answer, "send no amount")
                    return
                self._expect_success(answer, tx, "CANCEL", tx.amount, ZERO, ZERO)
                tx.status = "CANCEL"
                tx.done.append(("cancel", tx.amount, ""))

            def _refund(self, tx: Tx, data: st.DataObject) -> None:
                left = _minor(tx.left)
                choices = [
                    st.none(),  # what is left
                    st.integers(1000, max(1000, left)).map(_money),  # partial, at least 10
                    st.integers(max(1000, left + 1), max(1000, left) + 100_000).map(_money),
                ]
                if left > 0:
                    choices.append(st.just(left).map(_money))  # exactly what is left
                amount = data.draw(st.one_of(choices), label="amount")
                how = data.draw(st.sampled_from(["query", "json"]), label="how")
                external = data.draw(st.sampled_from(["", "refund-ext-1"]), label="externalID")
                answer = self._operate(tx.id, "refund", amount, how, external)
                if tx.status != "CHARGE":
                    _expect_refusal(
                        answer, f"refund needs status CHARGE; the transaction is {tx.status}"
                    )
                    return
                wanted = tx.left if amount is None else amount
                if wanted < MIN_REFUND:
                    _expect_refusal(answer, "a refund is at least 10 KZT")
                    return
                if wanted > tx.left:
                    _expect_refusal(answer, "the refunds would exceed the amount charged")
                    return
                refunded = tx.refunded + wanted
                status = "REFUND" if refunded == tx.charged else "CHARGE"
                self._expect_success(answer, tx, status, wanted, tx.charged, refunded)
                tx.status, tx.refunded = status, refunded
                tx.done.append(("refund", wanted, external))

            @precondition(lambda self: self.model)
            @rule(data=st.data())
            def status(self, data: st.DataObject) -> None:
                tx = data.draw(st.sampled_from(list(self.model.values())), label="transaction")
                self._check_status(tx)
                legacy = client.get(f"/operation/{tx.invoice}", headers=service)
                assert legacy.status_code == 200, legacy.text
                body = _body(legacy)
                assert (body["id"], body["code"], body["amount"]) == (tx.id, tx.status, tx.amount)

            # -- checks after every step -------------------------------------------

            @invariant()
            def database_agrees(self) -> None:
                if not self.model:
                    return
                with engine.connect() as conn:
                    rows = conn.execute(
                        sa.text(
                            "SELECT id, status, amount, amount_charged, amount_refunded,"
                            " amount_refund_pending, operation_lock FROM transactions"
                            " WHERE id IN :ids"
                        ).bindparams(sa.bindparam("ids", expanding=True)),
                        {"ids": list(self.model)},
                    ).all()
                assert len(rows) == len(self.model)
                for row in rows:
                    tx = self.model[row.id]
                    amount, charged, refunded, pending = (
                        _money(int(v))
                        for v in (
                            row.amount,
                            row.amount_charged,
                            row.amount_refunded,
                            row.amount_refund_pending,
                        )
                    )
                    # The invariants, on what the gateway stored.
                    assert charged <= amount, row
                    assert refunded <= charged, row
                    # And the model.
                    assert (row.status, amount, charged, refunded) == (
                        tx.status,
                        tx.amount,
                        tx.charged,
                        tx.refunded,
                    ), row
                    assert pending == 0 and row.operation_lock is None, row

            @invariant()
            def history_agrees(self) -> None:
                """One operations row per approved operation (none for a refusal), and one
                postLink per state change: the payment's, then each operation's."""
                if not self.model:
                    return
                ids = {"ids": list(self.model)}
                with engine.connect() as conn:
                    operations = conn.execute(
                        sa.text(
                            "SELECT transaction_id, kind, amount, external_id, state"
                            " FROM operations WHERE transaction_id IN :ids ORDER BY created_at"
                        ).bindparams(sa.bindparam("ids", expanding=True)),
                        ids,
                    ).all()
                    events = conn.execute(
                        sa.text(
                            "SELECT transaction_id, event FROM notifications"
                            " WHERE transaction_id IN :ids ORDER BY created_at"
                        ).bindparams(sa.bindparam("ids", expanding=True)),
                        ids,
                    ).all()
                for tx in self.model.values():
                    assert [
                        (o.kind, _money(int(o.amount)), o.external_id, o.state)
                        for o in operations
                        if o.transaction_id == tx.id
                    ] == [(*op, "done") for op in tx.done], tx
                    assert [e.event for e in events if e.transaction_id == tx.id] == [
                        "payment",
                        *(kind for kind, _, _ in tx.done),
                    ], tx

            @invariant()
            def status_api_agrees(self) -> None:
                for tx in self.model.values():
                    self._check_status(tx)

            # -- helpers ------------------------------------------------------------

            def _operate(
                self,
                tx_id: str,
                kind: str,
                amount: Decimal | None,
                how: str,
                external: str = "",
            ) -> httpx.Response:
                path = f"/operation/{tx_id}/{kind}"
                if how == "json":
                    parts = []
                    if amount is not None:
                        parts.append(f'"amount": {amount}')  # a JSON number, exactly
                    if external:
                        parts.append(f'"externalID": "{external}"')
                    return client.post(
                        path,
                        headers=service | {"Content-Type": "application/json"},
                        content="{" + ", ".join(parts) + "}",
                    )
                params = {} if amount is None else {"amount": str(amount)}
                if external:
                    params["externalID"] = external
                return client.post(path, headers=service, params=params)

            @staticmethod
            def _expect_success(
                answer: httpx.Response,
                tx: Tx,
                status: str,
                amount: Decimal,
                charged: Decimal,
                refunded: Decimal,
            ) -> None:
                assert answer.status_code == 200, answer.text
                body = _body(answer)
                assert (body["code"], body["message"], body["id"], body["status"]) == (
                    0,
                    "success",
                    tx.id,
                    status,
                ), answer.text
                assert (body["amount"], body["amountCharged"], body["amountRefunded"]) == (
                    amount,
                    charged,
                    refunded,
                ), answer.text
                assert len(body["operationId"]) == 36 and len(body["reference"]) == 12

            @staticmethod
            def _check_status(tx: Tx) -> None:
                answer = client.get(
                    f"/check-status/payment/transaction/{tx.invoice}", headers=service
                )
                assert answer.status_code == 200, answer.text
                body = _body(answer)
                assert (body["resultCode"], body["resultMessage"]) == ("100", "SUCCESS")
                seen = body["transaction"]
                assert (seen["id"], seen["invoiceID"], seen["statusName"]) == (
                    tx.id,
                    tx.invoice,
                    tx.status,
                ), seen
                assert (seen["amount"], seen["orgAmount"], seen["payoutAmount"]) == (
                    tx.amount,
                    tx.amount,
                    tx.charged - tx.refunded,
                ), seen
                assert seen["reasonCode"] == (484 if tx.status == "FAILED" else 0), seen

        run_state_machine_as_test(LifeCycle, settings=SETTINGS)
