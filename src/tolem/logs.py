"""Logging: one format for tolem and uvicorn, with card numbers redacted.

tolem never logs a PAN or CVC on purpose; the redaction filter is the safety net for
what it does not control (a library's message, an echoed request line): any run of
12 to 19 digits that passes Luhn is masked before a record is written.
"""

from __future__ import annotations

import logging
import re
import sys

from tolem import carddata
from tolem.config import Settings

# Not the last group of a UUID (a transaction or notification id), which may be all
# digits and pass Luhn by chance.
_DIGIT_RUN = re.compile(r"(?<!\d)(?<![0-9a-fA-F]{4}-)\d{12,19}(?!\d)")
# Bearer tokens that travel in a URL (the hosted TermUrl's ?Access=, and the payment
# page's ?params=, which holds the whole token response) end up in access lines; they
# are as good as a password until they expire. So is a payment page's key (?k=).
_URL_TOKEN = re.compile(r"(?i)([?&](?:access|params|k)=)[^&\s\"']+")


def redact(text: str) -> str:
    text = _URL_TOKEN.sub(r"\1***", text)
    return _DIGIT_RUN.sub(
        lambda m: carddata.mask(m.group()) if carddata.luhn_ok(m.group()) else m.group(), text
    )


class RedactCards(logging.Filter):
    """Mask card numbers in the message, the traceback and the stack of a record."""

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            # Formatters reuse exc_text when it is set, so the clean text is what prints.
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def configure_logging(settings: Settings) -> None:
    """tolem's and uvicorn's records through one redacting handler on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s %(process)d %(message)s")
    )
    handler.addFilter(RedactCards())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
