"""The HTTP edge: JSON in and out, exactly as ePay clients expect.

Amounts are :class:`~decimal.Decimal` from the moment a body is parsed to the moment a
response is written: JSON numbers are read with ``parse_float=Decimal`` and written
back as exact numbers (``100``, ``100.5``), never through a float.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

MAX_JSON_DEPTH = 32


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return orjson.Fragment(_decimal_text(value))
    raise TypeError(f"cannot serialise {type(value).__name__}")


def _decimal_text(value: Decimal) -> str:
    if value == value.to_integral_value():
        return str(value.quantize(Decimal(1)))
    return format(value.normalize(), "f")


def dumps(content: Any) -> bytes:
    return orjson.dumps(content, default=_default)


class EpayJSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return dumps(content)


def json_response(
    content: Any, status_code: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    return EpayJSONResponse(content, status_code=status_code, headers=headers)


class BodyTooLarge(Exception):
    """Raised while a body is read past the limit; the BodyLimit middleware answers 413."""


class BodyError(ValueError):
    def __init__(self, message: str, *, too_large: bool = False) -> None:
        super().__init__(message)
        self.too_large = too_large


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes before reading them all."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise BodyError("invalid Content-Length")
        if int(declared) > limit:
            raise BodyError(f"body larger than {limit} bytes", too_large=True)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyError(f"body larger than {limit} bytes", too_large=True)
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """Parse a JSON object body: decimals stay decimals, nesting is bounded."""
    if not raw.strip():
        raise BodyError("empty body: a JSON object is expected")
    if _depth_exceeds(raw, MAX_JSON_DEPTH):
        raise BodyError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        value = json.loads(raw, parse_float=Decimal)
    except (ValueError, RecursionError) as exc:
        raise BodyError("body is not valid JSON") from exc
    if not isinstance(value, dict):
        raise BodyError("body must be a JSON object")
    problem = _strings_problem(value)
    if problem:
        raise BodyError(problem)
    return value


def text_problem(text: str) -> str | None:
    """Why a string cannot be stored or sent back: a NUL character or a lone surrogate.

    PostgreSQL refuses NUL in text and no database or JSON writer takes a lone
    surrogate (``"\\ud800"`` is valid JSON but not valid Unicode).
    """
    if "\x00" in text:
        return "strings must not contain NUL (\\u0000) characters"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "strings must be valid Unicode (a lone surrogate \\ud800-\\udfff was sent)"
    return None


def _strings_problem(value: Any) -> str | None:
    """The first :func:`text_problem` of any key or string value in a parsed JSON body."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            strings: Any = (item,)
        elif isinstance(item, dict):
            strings = item.keys()
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
            continue
        else:
            continue
        for text in strings:
            problem = text_problem(text)
            if problem:
                return f"body is not acceptable JSON: {problem}"
    return None


def _depth_exceeds(raw: bytes, limit: int) -> bool:
    """Whether nesting goes deeper than ``limit`` (brackets inside strings do not count)."""
    if raw.count(b"[") + raw.count(b"{") <= limit:  # fast path: too few to nest that deep
        return False
    depth = 0
    in_string = False
    escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > limit:
                return True
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return False


async def send_json(
    send: Any, status: int, content: Any, *, extra_headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """Answer from plain ASGI middleware (outside FastAPI's response classes)."""
    body = dumps(content)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *(extra_headers or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
