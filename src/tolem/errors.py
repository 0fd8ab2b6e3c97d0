"""Errors that reach the wire, and the one handler that renders them.

    TolemError                 HTTP status + ePay code + message (+ invoice fields)
    ├── BadRequest             400, a malformed or inconsistent request
    │   └── PaymentDeclined    400, the processor said no (code = reason code)
    ├── Unauthorized           401, no valid credentials or token
    ├── NotFound               404
    ├── PayloadTooLarge        413
    └── Conflict               409

Every error body has ``code`` and ``message``; payment errors add the invoice fields
ePay sends (``invoiceId``, ``id``, ``reference``, ``accountId``).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from tolem.logs import request_id
from tolem.wire import json_response

log = logging.getLogger("tolem.errors")

#: ePay's generic API error (EPAY.md section 8): not a reason code.
API_ERROR = 100
#: Reason code 477, "format error": a field that is missing or malformed.
FORMAT_ERROR = 477
#: The access line's status of a request whose client went away before sending all of
#: its body (nginx's "client closed request"); nothing is sent.
CLIENT_GONE = 499


class TolemError(Exception):
    status_code = 400

    def __init__(self, message: str, *, code: int = API_ERROR, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.fields = fields

    def body(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, **self.fields}


class BadRequest(TolemError):
    status_code = 400


class PaymentDeclined(BadRequest):
    pass


class Unauthorized(TolemError):
    status_code = 401


class NotFound(TolemError):
    status_code = 404


class Conflict(TolemError):
    status_code = 409


class PayloadTooLarge(TolemError):
    status_code = 413


def install_handlers(app: FastAPI) -> None:
    async def tolem_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, TolemError)
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        return json_response(exc.body(), status_code=exc.status_code, headers=headers)

    async def validation_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        text = f"{where}: {first.get('msg', 'invalid')}" if where else "invalid request"
        return json_response({"code": FORMAT_ERROR, "message": text}, status_code=400)

    async def http_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        return json_response(
            {"code": API_ERROR, "message": str(exc.detail)},
            status_code=exc.status_code,
            headers=dict(exc.headers or {}),
        )

    async def client_gone(_request: Request, exc: Exception) -> Response:
        # Not the gateway's error: the request was never whole, so nothing of it ran.
        assert isinstance(exc, ClientDisconnect)
        log.info("the client went away before sending the whole request")
        return Response(status_code=CLIENT_GONE)

    async def unexpected(_request: Request, exc: Exception) -> Response:
        log.exception("unhandled error: %s", type(exc).__name__)
        # Starlette answers an unhandled error from its outermost middleware, outside
        # observability.RequestContext, which adds the header to every other answer: the
        # id is still the request's (the same task), so it is added here.
        rid = request_id.get()
        headers = {"X-Request-ID": rid} if rid != "-" else None
        return json_response(
            {"code": 461, "message": "System error"}, status_code=500, headers=headers
        )

    app.add_exception_handler(TolemError, tolem_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(ClientDisconnect, client_gone)
    app.add_exception_handler(Exception, unexpected)
