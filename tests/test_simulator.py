"""The simulator's decisions and its idempotent ledger."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.support import TEST_CARDS
from tolem import carddata, reasons
from tolem.db.engine import Database
from tolem.db.migrate import upgrade
from tolem.processor.base import AuthorizationRequest, Card
from tolem.processor.cards import (
    THREE_DS,
    TRIGGERS,
    WRONG_CVC,
    WRONG_EXPIRY,
    catalogue,
    trigger_pan,
)
from tolem.processor.simulator import Simulator, decide, rrn

TODAY = datetime(2026, 11, 22, tzinfo=UTC)


def card(pan: str, exp: str, cvc: str) -> Card:
    return Card(pan=pan, exp_month=int(exp[:2]), exp_year=2000 + int(exp[2:]), cvc=cvc)


@pytest.mark.parametrize(("pan", "exp", "cvc", "code"), TEST_CARDS)
def test_published_cards_keep_their_outcome_whatever_the_date(
    pan: str, exp: str, cvc: str, code: int
) -> None:
    assert decide(card(pan, exp, cvc), TODAY) == code
    assert decide(card(pan, exp, cvc), datetime(2019, 1, 1, tzinfo=UTC)) == code


def test_published_card_with_wrong_cvc_or_expiry() -> None:
    assert decide(card("4405639704015096", "0125", "816"), TODAY) == WRONG_CVC
    assert decide(card("4405639704015096", "0225", "815"), TODAY) == WRONG_EXPIRY


def test_every_reason_code_has_a_trigger_card() -> None:
    assert {c.reason_code for c in TRIGGERS} == set(reasons.REASONS)
    for trigger in TRIGGERS:
        assert carddata.luhn_ok(trigger.pan)
        assert len(trigger.pan) == 16
        assert decide(card(trigger.pan, "0130", "123"), TODAY) == trigger.reason_code
    assert trigger_pan(484) == "4000000004840007"


@pytest.mark.parametrize(
    ("pan", "exp", "cvc", "code"),
    [
        ("4111111111111112", "1230", "123", 471),  # Luhn fails
        ("4111111111111111", "1330", "123", 457),  # month 13
        ("4111111111111111", "0026", "123", 457),  # month 0
        ("4111111111111111", "1026", "123", 478),  # October 2026 is past on TODAY
        ("4111111111111111", "1126", "123", 0),  # this month is still valid
        ("4111111111111111", "1230", "1234", 477),  # four digits for a Visa
        ("4111111111111111", "1230", "12", 0),  # a dropped leading zero: 012
        ("378282246310005", "1230", "123", 0),  # Amex: 0123 after padding
        ("378282246310005", "1230", "12345", 477),
    ],
)
def test_other_cards(pan: str, exp: str, cvc: str, code: int) -> None:
    assert decide(card(pan, exp, cvc), TODAY) == code


def test_catalogue_lists_published_cards_and_triggers() -> None:
    pans = {c.pan for c in catalogue()}
    assert {pan for pan, *_ in TEST_CARDS} <= pans
    assert len(catalogue()) == len(TEST_CARDS) + len(THREE_DS) + len(reasons.REASONS)


def test_rrn_looks_live() -> None:
    value = rrn(datetime(2025, 2, 12, 9, tzinfo=UTC))
    assert len(value) == 12 and value.isdigit() and value.startswith("504309")


@pytest.fixture
def simulator(tmp_path: Path) -> Simulator:
    db = Database(f"sqlite:///{tmp_path / 'sim.db'}")
    upgrade(db)
    return Simulator(db, root_key=b"k" * 32, acs_url="http://127.0.0.1/acs/pa")


def _request(reference: str, pan: str = "4405639704015096") -> AuthorizationRequest:
    return AuthorizationRequest(
        reference=reference,
        terminal_id="t",
        amount=Decimal("100.50"),
        currency="KZT",
        card=card(pan, "0125", "815"),
        capture=False,
    )


def test_same_reference_returns_the_first_answer_once(simulator: Simulator) -> None:
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: simulator.authorize(_request("ref-1")), range(8)))
    assert len({r.rrn for r in results}) == 1 and results[0].approved
    with simulator._db.read() as session:
        rows = session.execute(sa.text("SELECT count(*), max(amount) FROM simulator_ledger"))
        assert tuple(rows.one()) == (1, 10050)  # minor units: exact


def test_operations_need_an_approved_authorization(simulator: Simulator) -> None:
    simulator.authorize(_request("auth-1"))
    assert simulator.capture("cap-1", "auth-1", Decimal("50")).approved
    assert (
        simulator.capture("cap-1", "auth-1", Decimal("50")).rrn
        == simulator.capture("cap-1", "auth-1", Decimal("50")).rrn
    )
    unknown = simulator.refund("ref-x", "no-such-auth", Decimal("10"))
    assert not unknown.approved and unknown.reason_code == 522


def test_card_repr_hides_pan_and_cvc() -> None:
    text = repr(card("4405639704015096", "0125", "815"))
    assert "4405639704015096" not in text and "815" not in text
