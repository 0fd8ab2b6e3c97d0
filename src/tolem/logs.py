"""Logging: one format for tolem and uvicorn, with card numbers redacted.

tolem never logs a PAN or CVC on purpose; the redaction is the safety net for what it
does not control (a library's message, an echoed request line, a client's header): any
run of 12 to 19 digits that passes Luhn, typed plain or with the spaces or dashes people
put between groups, is masked, and so are the values of URL parameters that carry a
bearer token or a CVC. The formatters redact the whole line they write, every field of
it (the request id, the path and the message alike), not only the message.

Every record carries ``request_id``: the id of the HTTP request being handled (see
``tolem.observability``), or ``-`` outside a request.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from contextvars import ContextVar
from typing import Any

import orjson

from tolem import carddata
from tolem.config import Settings

#: The id of the request this task is handling; set by ``observability.RequestContext``.
request_id: ContextVar[str] = ContextVar("tolem_request_id", default="-")

# Digits with at most one separator between them, 12 or more digits in all. A UUID (a
# transaction or notification id) is matched first and left alone: its last group may be
# all digits and pass Luhn by chance.
_DIGIT_RUN = re.compile(
    r"(?P<uuid>[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})"
    r"|(?<!\d)(?<![0-9a-fA-F]{4}-)\d(?:(?:[ +-]|%20|%2[dD])?\d){11,}(?!\d)"
)
# Between groups: a space or dash, or how a URL writes a space (+, %20) or a dash (%2D).
_SEPARATOR = re.compile(r"[ +-]|%20|%2[dD]")
# Bearer tokens that travel in a URL (the hosted TermUrl's ?Access=, and the payment
# page's ?params=, which holds the whole token response) end up in access lines; they
# are as good as a password until they expire. So is a payment page's key (?k=). A CVC
# has no shape to recognise, so it is recognised by its parameter's name.
_URL_TOKEN = re.compile(r"(?i)([?&](?:access|params|k|cvc2?|cvv2?|cvn|csc|card_?cvc)=)[^&\s\"'\\]+")


#: Card number lengths, the most common first: which stretch of typed groups to try first.
_LENGTHS = (16, 15, 19, 14, 18, 17, 13, 12)


def _mask_run(match: re.Match[str]) -> str:
    run = match.group()
    if match.group("uuid"):
        return run
    if len(run) <= 19 and carddata.luhn_ok(run):  # the common case: plain digits
        return carddata.mask(run)
    groups = _SEPARATOR.split(run)
    if len(groups) == 1:
        # One long run of plain digits (a reference, an amount in minor units): only a
        # whole run of 12 to 19 digits is taken for a card number, as before.
        return run
    # Typed groups: the card number may be any stretch of whole groups (a run of
    # "4405 6397 0401 5096 100" holds one), so try every stretch, in the order of _LENGTHS.
    spans = [
        (i, j)
        for i in range(len(groups))
        for j in range(i + 1, len(groups) + 1)
        if 12 <= sum(len(g) for g in groups[i:j]) <= 19
    ]
    spans.sort(key=lambda span: _LENGTHS.index(sum(len(g) for g in groups[span[0] : span[1]])))
    masked = list(groups)
    hit = False
    for i, j in spans:
        digits = "".join(groups[i:j])
        if masked[i:j] == groups[i:j] and carddata.luhn_ok(digits):
            masked[i:j] = [carddata.mask(digits)] + [""] * (j - i - 1)
            hit = True
    if not hit:
        return run
    # Keep the separators between the groups that were not part of a card number.
    separators = _SEPARATOR.findall(run)
    out = masked[0]
    for sep, group in zip(separators, masked[1:], strict=True):
        out += (sep + group) if group else ""
    return out


# Where a card number could be: a stretch of digits and separator characters. Cheap to
# look for, and most lines have none, so the precise pattern above seldom runs.
_CANDIDATE = re.compile(r"[0-9][0-9 +%dD-]{11,}")


def redact(text: str) -> str:
    if "=" in text:
        text = _URL_TOKEN.sub(r"\1***", text)
    if _CANDIDATE.search(text) is None:
        return text
    return _DIGIT_RUN.sub(_mask_run, text)


class RedactCards(logging.Filter):
    """Mask card numbers in the message, the traceback and the stack of a record.

    It also fills in the record's ``request_id``.
    """

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id.get()
        # The formatted, redacted message replaces msg and args, so it is formatted once.
        record.msg, record.args = redact(record.getMessage()), None
        if record.exc_info and not record.exc_text:
            # Formatters reuse exc_text when it is set, so the clean text is what prints.
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


class RequestIdFilter(logging.Filter):
    """Give every record the id of the request being handled (``-`` outside one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id.get()
        return True


class TextFormatter(logging.Formatter):
    """Today's line, with the request id after the level (so "logger pid message" stays
    as it was for whatever reads it). Every part that can come from outside (the
    message with its arguments, the request id, a traceback, a stack) is redacted; the
    rest (time, level, logger, process id) is tolem's own."""

    _redact = RedactCards()

    def __init__(self) -> None:
        super().__init__(
            "%(asctime)s %(levelname)s %(request_id)s %(name)s %(process)d %(message)s"
        )

    def format(self, record: logging.LogRecord) -> str:
        self._redact.filter(record)
        record.request_id = redact(str(getattr(record, "request_id", "-")))
        return super().format(record)


#: Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "request_id"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, and the
    record's extra attributes; those of an ``extra={"fields": {...}}`` dict become
    fields of their own (an access line's method, path, route, status, duration_ms).

    The serialised line is redacted as a whole, so a card number is masked in
    whichever field it arrived: the request id, a path, an error.
    """

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _utc_time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or request_id.get(),
            "pid": record.process,
        }
        attributes = record.__dict__
        for key in attributes.keys() - _STANDARD:
            if key == "fields" and isinstance(attributes[key], dict):
                entry.update(attributes[key])  # extra={"fields": {...}}: one by one
            elif not key.startswith("_"):
                entry[key] = attributes[key]
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        line = orjson.dumps(entry, default=str).decode()
        return redact(line)


def _utc_time(created: float) -> str:
    seconds = int(created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + (
        f".{int((created - seconds) * 1000):03d}Z"
    )


def configure_logging(settings: Settings) -> None:
    """tolem's and uvicorn's records through one redacting handler on stderr.

    uvicorn's own access line is switched off: ``observability.RequestContext`` writes
    one per request instead (logger ``tolem.access``), at its end, with its duration.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    # No handler and no propagation: uvicorn sees hasHandlers() false and skips its line.
    access = logging.getLogger("uvicorn.access")
    access.handlers[:] = []
    access.propagate = False
