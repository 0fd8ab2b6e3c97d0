"""What /openapi.json says each endpoint answers: the JSON shapes and the error statuses.

The endpoints return raw responses (``wire.json_response``) so that ePay's field names
and exact decimals reach the wire untouched; FastAPI cannot see through that and would
document every answer as a JSON *string*, and every endpoint as answering 422 with
FastAPI's validation body, which tolem never sends (a malformed request is 400 with
``code`` 477, see ``tolem.errors``). :func:`install` replaces those parts with what
the gateway really answers, so that a client generated from the schema, and the fuzz
test (``tests/test_fuzz_api.py``) that checks every answer against it, read the truth.

Only documented fields are required; ePay adds fields over time, so every object
stays open to more.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from tolem.payments.schemas import SavedCardBody

_STR: dict[str, Any] = {"type": "string"}
_INT: dict[str, Any] = {"type": "integer"}
_NUM: dict[str, Any] = {"type": "number"}
_BOOL: dict[str, Any] = {"type": "boolean"}
_NULLABLE_STR: dict[str, Any] = {"type": ["string", "null"]}
_NULLABLE_INT: dict[str, Any] = {"type": ["integer", "null"]}


def _obj(required: dict[str, Any], **optional: Any) -> dict[str, Any]:
    return {
        "type": "object",
        "required": list(required),
        "properties": {**required, **optional},
    }


#: Every error body (``tolem.errors``): ``code`` (an ePay code) and ``message``; payment
#: errors add the invoice fields, token errors RFC 6749's ``error``.
ERROR = _obj(
    {"code": _INT, "message": _STR},
    invoiceId=_STR,
    id=_STR,
    reference=_STR,
    accountId=_STR,
    error=_STR,
    error_description=_STR,
)

TOKEN = _obj(
    {
        "access_token": _STR,
        "expires_in": _STR,  # a string, as the live service sends it
        "refresh_token": _STR,
        "scope": _STR,
        "token_type": _STR,
    }
)

_PAID = _obj(
    {
        "id": _STR,
        "amount": _NUM,
        "currency": _STR,
        "invoiceID": _STR,
        "reference": _STR,
        "secure3D": {"type": "null"},
        "code": _INT,
        "status": _STR,
        "cardMask": _STR,
    },
    accountID=_STR,
    cardID=_STR,
    approvalCode=_STR,
)
_CHALLENGE = _obj(
    {
        "id": _STR,
        "amount": _NUM,
        "currency": _STR,
        "invoiceID": _STR,
        "secure3D": _obj({"paReq": _STR, "md": _STR, "action": _STR}),
    }
)
#: A payment's answer: paid (or authorised), or a 3-D Secure challenge (EPAY.md 5).
PAYMENT = {"oneOf": [_PAID, _CHALLENGE]}

TRANSACTION = _obj(
    {
        "id": _STR,
        "createdDate": _STR,
        "invoiceID": _STR,
        "amount": _NUM,
        "payoutAmount": _NUM,
        "orgAmount": _NUM,
        "currency": _STR,
        "terminal": _STR,
        "cardMask": _STR,
        "reference": _STR,
        "reason": _STR,
        "reasonCode": _INT,
        "secure": _BOOL,
        "statusName": _STR,
    }
)
STATUS = _obj({"resultCode": _STR, "resultMessage": _STR, "transaction": TRANSACTION})
#: check-status without a transaction to show: 400 with ePay's result code.
STATUS_REFUSED = {"oneOf": [_obj({"resultCode": _STR, "resultMessage": _STR}), ERROR]}
LEGACY_STATUS = {"allOf": [TRANSACTION, _obj({"code": _STR})]}
#: The legacy status refused: ``code`` is check-status's result code, a string.
LEGACY_REFUSED = {"oneOf": [_obj({"code": _STR, "message": _STR}), ERROR]}

OPERATION = _obj(
    {
        "code": _INT,
        "message": _STR,
        "id": _STR,
        "operationId": _STR,
        "status": _STR,
        "amount": _NUM,
        "amountCharged": _NUM,
        "amountRefunded": _NUM,
        "reference": _STR,
    }
)

NOTIFICATION = _obj(
    {
        "id": _STR,
        "transactionId": _STR,
        "event": _STR,
        "url": _STR,
        "state": {"type": "string", "enum": ["pending", "delivered", "failed"]},
        "attempts": _INT,
        "lastStatus": _NULLABLE_INT,
        "lastError": _STR,
        "nextAttemptAt": _NULLABLE_STR,
        "createdAt": _STR,
        "deliveredAt": _NULLABLE_STR,
    }
)
NOTIFICATIONS = _obj({"notifications": {"type": "array", "items": NOTIFICATION}})
NOTIFICATION_DETAIL = {
    "allOf": [
        NOTIFICATION,
        _obj(
            {
                "body": {"type": "object"},
                "deliveries": {
                    "type": "array",
                    "items": _obj(
                        {
                            "number": _INT,
                            "startedAt": _STR,
                            "outcome": _STR,
                            "httpStatus": _NULLABLE_INT,
                            "latencyMs": _NULLABLE_INT,
                            "error": _STR,
                        }
                    ),
                },
            }
        ),
    ]
}
REDELIVER = _obj({"code": _INT, "message": _STR, "id": _STR})

SAVED_CARDS = {
    "type": "array",
    "items": _obj(
        {
            "ID": _STR,
            "TransactionId": _STR,
            "MerchantID": _STR,
            "CardHash": _STR,
            "CardMask": _STR,
            "PayerName": _STR,
            "Terminal": _STR,
            "CreatedDate": _STR,
            "PaymentAvailable": _BOOL,
            "AccountID": _STR,
        }
    ),
}
DEACTIVATED = _obj({"status": _STR})

_TEXT_VALUE = {"type": ["string", "number"]}
OPERATIONS_BODY = {
    "type": "object",
    "required": ["searchParameters"],
    "properties": {
        "paging": {
            "type": "object",
            "properties": {"page": {"type": ["integer", "string"]}, "size": _INT},
        },
        "searchParameters": {
            "type": "array",
            "items": _obj(
                {
                    "name": _STR,
                    "method": _STR,
                    "searchParameter": {
                        "oneOf": [{"type": "array", "items": _TEXT_VALUE}, _TEXT_VALUE]
                    },
                }
            ),
        },
        "orderParameters": {
            "type": "array",
            "items": _obj({"field": _STR}, typeOrder=_STR),
        },
    },
}
OPERATIONS_EXAMPLE = {
    "paging": {"page": 1, "size": 20},
    "searchParameters": [
        {
            "name": "created_date",
            "method": "between",
            "searchParameter": ["2024-01-01T00:00:00Z", "2024-02-01T00:00:00Z"],
        }
    ],
    "orderParameters": [{"field": "created_date", "typeOrder": "DESC"}],
}
OPERATIONS_ANSWER = _obj(
    {
        "totalCount": _INT,
        "totalCountExact": _BOOL,
        "records": {
            "type": "array",
            "items": _obj(
                {
                    "id": _STR,
                    "invoiceId": _STR,
                    "amount": _NUM,
                    "currency": _STR,
                    "createdDate": _STR,
                    "payoutAmount": _NUM,
                    "status": _STR,
                }
            ),
        },
    }
)

_OPERATION_QUERY = [
    {
        "name": "amount",
        "in": "query",
        "required": False,
        "description": "Amount to charge or refund (default: the whole amount).",
        "schema": {"type": "string"},
    },
    {
        "name": "externalID",
        "in": "query",
        "required": False,
        "description": "The shop's own id of the operation (at most 100 characters).",
        "schema": {"type": "string"},
    },
]
_IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": (
        "One execution per key: the same request again replays the first answer "
        "(1 to 255 printable ASCII characters; beyond ePay)."
    ),
    "schema": {"type": "string"},
}

#: (method, path) → (the 200 answer's schema, error statuses beyond 400 and 413).
ANSWERS: dict[tuple[str, str], tuple[dict[str, Any] | None, tuple[int, ...]]] = {
    ("post", "/oauth2/token"): (TOKEN, (401,)),
    ("get", "/public.rsa"): (None, ()),
    ("post", "/payment/cryptopay"): (PAYMENT, (401,)),
    ("post", "/payment/confirm"): (PAYMENT, (401,)),
    ("get", "/check-status/payment/transaction/{invoice_id}"): (STATUS, (401,)),
    ("get", "/operation/{invoice_id}"): (LEGACY_STATUS, (401,)),
    ("post", "/operation/{transaction_id}/charge"): (OPERATION, (401,)),
    ("post", "/operation/{transaction_id}/cancel"): (OPERATION, (401,)),
    ("post", "/operation/{transaction_id}/refund"): (OPERATION, (401,)),
    ("get", "/notifications"): (NOTIFICATIONS, (401,)),
    ("get", "/notifications/{notification_id}"): (NOTIFICATION_DETAIL, (401, 404)),
    ("post", "/notifications/{notification_id}/redeliver"): (REDELIVER, (401, 404)),
    ("post", "/payments/cards/auth"): (PAYMENT, (401,)),
    ("get", "/cards/{account_id}"): (SAVED_CARDS, (401,)),
    ("post", "/card/deactivate/{card_id}"): (DEACTIVATED, (401,)),
    ("post", "/operations"): (OPERATIONS_ANSWER, (401, 403)),
}

_REASONS = {
    400: "A malformed or refused request",
    401: "No valid credentials or token",
    403: "A token of the wrong kind",
    404: "Not found (or not the token's merchant's)",
    409: "A request with this Idempotency-Key is still running",
    413: "The body is larger than TOLEM_MAX_BODY_BYTES",
    422: "This Idempotency-Key was used with another request",
}


#: Refusals whose body is not ERROR: (id of the 200 answer's schema, status) → schema.
_REFUSALS = {(id(STATUS), 400): STATUS_REFUSED, (id(LEGACY_STATUS), 400): LEGACY_REFUSED}


def _saved_card() -> dict[str, Any]:
    """The saved-card payment's body; ``cardId`` is ePay's object, or the bare id."""
    body = SavedCardBody.model_json_schema(by_alias=True)
    card_id = body["properties"]["cardId"]
    body["properties"]["cardId"] = {
        "description": card_id["description"],
        "oneOf": [{"type": "string", "maxLength": 36}, _obj({"id": {"type": "string"}})],
    }
    return body


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def document(spec: dict[str, Any]) -> dict[str, Any]:
    """Correct FastAPI's generated ``spec`` in place (and return it)."""
    for path, operations in spec.get("paths", {}).items():
        for method, operation in operations.items():
            known = ANSWERS.get((method, path))
            if known is None:  # tests/test_openapi.py keeps this table complete
                continue
            answer, extra = known
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)  # FastAPI's validation error: tolem answers 400
            if answer is not None:
                responses["200"] = {"description": "Success", "content": _json(answer)}
            statuses = set(extra)
            if method == "post":
                statuses |= {409, 422}
                operation.setdefault("parameters", []).append(_IDEMPOTENCY_KEY)
            if answer is not None:
                statuses |= {400, 413}
            for status in sorted(statuses):
                schema = _REFUSALS.get((id(answer), status), ERROR)
                responses[str(status)] = {"description": _REASONS[status], "content": _json(schema)}
            if path.startswith("/operation/") and method == "post":
                operation.setdefault("parameters", []).extend(_OPERATION_QUERY)
                operation["requestBody"] = {
                    "required": False,
                    "content": _json(_obj({}, amount=_TEXT_VALUE, externalID=_STR)),
                }
            if path == "/payments/cards/auth":
                operation["requestBody"] = {"required": True, "content": _json(_saved_card())}
            if path == "/operations":
                content = _json(OPERATIONS_BODY)
                content["application/json"]["example"] = OPERATIONS_EXAMPLE
                operation["requestBody"] = {"required": True, "content": content}
    schemas = spec.get("components", {}).get("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    return spec


def install(app: FastAPI) -> None:
    """Serve the corrected schema at /openapi.json (built once, on first request)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
