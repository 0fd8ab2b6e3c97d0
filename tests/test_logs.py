"""The log redaction filter: the safety net behind 'never log a PAN'."""

from __future__ import annotations

import io
import logging

from tolem.logs import RedactCards, redact


def test_redact_masks_luhn_valid_numbers_only() -> None:
    assert redact("card 4405639704015096 paid") == "card 440563...5096 paid"
    assert redact("rrn 504355533594 ok") == "rrn 504355533594 ok"  # not a card number
    assert redact("x4405639704015096") == "x440563...5096"
    line = '"POST /payments/cards/confirmPayment?Access=abc-DEF_123&x=1 HTTP/1.1" 303'
    assert redact(line) == '"POST /payments/cards/confirmPayment?Access=***&x=1 HTTP/1.1" 303'


def test_messages_arguments_and_tracebacks_are_redacted() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactCards())
    logger = logging.getLogger("tolem.test_logs")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("paying with %s", "5522042705066736")
        try:
            raise ValueError("bad card 4003032704547597")
        except ValueError:
            logger.exception("failed")
        logger.warning("stack", stack_info=True, extra={"x": "377514500004820"})
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    for pan in ("5522042705066736", "4003032704547597"):
        assert pan not in text
    assert "552204...6736" in text and "400303...7597" in text


def test_an_id_whose_last_group_passes_luhn_is_not_masked() -> None:
    from tolem.carddata import luhn_ok
    from tolem.logs import redact

    assert luhn_ok("334099988050")
    line = "postLink 0f871341-180b-46d5-b180-334099988050 card 4405639704015096"
    assert redact(line) == "postLink 0f871341-180b-46d5-b180-334099988050 card 440563...5096"
