"""OpenAPI at /openapi.json and interactive docs at /docs, with nothing from a CDN."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import schemathesis

from tests.secure3d_support import VISA_3DS
from tests.support import Gateway, cryptopay, new_invoice, payment_body, token
from tolem import openapi, sandbox
from tolem.app import create_app
from tolem.config import Settings


def test_openapi_lists_the_endpoints(gateway: Gateway) -> None:
    with gateway.client() as client:
        spec = client.get("/openapi.json").json()
    assert {"/oauth2/token", "/payment/cryptopay", "/public.rsa"} <= set(spec["paths"])
    body = spec["paths"]["/payment/cryptopay"]["post"]["requestBody"]["content"]
    properties = body["application/json"]["schema"]["properties"]
    assert {"amount", "currency", "cryptogram", "invoiceId", "postLink", "cardSave"} <= set(
        properties
    )


def test_docs_page_loads_its_assets_from_the_gateway(gateway: Gateway) -> None:
    with gateway.client() as client:
        page = client.get("/docs")
        assert page.status_code == 200 and "swagger" in page.text.lower()
        sources = re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", page.text)
        assert sources, page.text
        for source in sources:
            assert source.startswith("/"), f"{source} is not served by the gateway"
            assert client.get(source).status_code == 200, source


def _spec() -> dict[str, Any]:
    return create_app(Settings(), prepare=False).openapi()


def test_every_operation_has_its_answers_documented() -> None:
    spec = _spec()
    operations = {(m, p) for p, ops in spec["paths"].items() for m in ops}
    assert operations == set(openapi.ANSWERS)
    assert ("post", "/operations") in operations  # the cabinet API is part of the API


def test_the_schema_documents_what_tolem_answers_not_fastapis_defaults() -> None:
    """FastAPI documented every JSON answer as a string and a 422 validation error that
    tolem never sends (a malformed request is 400, code 477); found by the fuzz test."""
    spec = _spec()
    assert "HTTPValidationError" not in json.dumps(spec)
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            if path == "/public.rsa":
                assert set(responses) == {"200"}
                continue
            assert {"200", "400", "401", "413"} <= set(responses), (method, path)
            assert ("422" in responses) == (method == "post"), (method, path)  # Idempotency-Key
            answer = responses["200"]["content"]["application/json"]["schema"]
            assert answer.get("type") != "string", (method, path)
            for status, response in responses.items():
                if status != "200":
                    error = response["content"]["application/json"]["schema"]
                    assert error.get("type") == "object" or "oneOf" in error, (method, status)
    body = spec["paths"]["/payments/cards/auth"]["post"]["requestBody"]["content"]
    assert "cardId" in body["application/json"]["schema"]["properties"]
    charge = spec["paths"]["/operation/{transaction_id}/charge"]["post"]
    assert {"amount", "externalID", "Idempotency-Key"} <= {p["name"] for p in charge["parameters"]}


def _check(schema: Any, path: str, method: str, answer: httpx.Response) -> dict[str, Any]:
    """The answer's status is documented for the operation and its body matches."""
    operation = schema[path][method.upper()]
    assert str(answer.status_code) in operation.definition.raw["responses"], answer.text
    operation.validate_response(answer)
    result: dict[str, Any] | list[Any] = answer.json()
    return result if isinstance(result, dict) else {"items": result}


def test_real_answers_match_the_documented_schemas(gateway: Gateway) -> None:
    """The fuzz test rarely pays; here a real payment and what follows it: every
    answer (successes and refusals) is checked against /openapi.json."""
    with gateway.client() as client:
        schema = schemathesis.openapi.from_dict(client.get("/openapi.json").json())
        invoice = new_invoice()
        body = payment_body(gateway, invoice)
        tok = token(client, invoice=invoice)["access_token"]
        paid = _check(schema, "/payment/cryptopay", "post", cryptopay(client, tok, body))
        service = {"Authorization": f"Bearer {token(client)['access_token']}"}
        for path in (f"/check-status/payment/transaction/{invoice}", f"/operation/{invoice}"):
            template = path.replace(invoice, "{invoice_id}")
            _check(schema, template, "get", client.get(path, headers=service))
            refused = client.get(path.replace(invoice, "no-such-invoice"), headers=service)
            assert refused.status_code == 400
            _check(schema, template, "get", refused)
        for action in ("charge", "refund", "cancel"):  # cancel after a refund: refused
            answer = client.post(f"/operation/{paid['id']}/{action}?amount=10", headers=service)
            _check(schema, f"/operation/{{transaction_id}}/{action}", "post", answer)
        listing = _check(
            schema, "/notifications", "get", client.get("/notifications", headers=service)
        )
        assert listing["notifications"]
        first = listing["notifications"][0]["id"]
        _check(
            schema,
            "/notifications/{notification_id}",
            "get",
            client.get(f"/notifications/{first}", headers=service),
        )
        _check(
            schema,
            "/notifications/{notification_id}",
            "get",
            client.get("/notifications/x", headers=service),
        )
        cards = _check(
            schema, "/cards/{account_id}", "get", client.get("/cards/uuid000001", headers=service)
        )
        card_id = cards["items"][0]["ID"]
        again = new_invoice()
        saved = {k: v for k, v in payment_body(gateway, again).items() if k != "cryptogram"}
        saved |= {"cardId": {"id": card_id}, "paymentType": "cardId"}
        card_token = token(client, invoice=again)["access_token"]
        answer = client.post(
            "/payments/cards/auth", json=saved, headers={"Authorization": f"Bearer {card_token}"}
        )
        _check(schema, "/payments/cards/auth", "post", answer)
        _check(
            schema,
            "/card/deactivate/{card_id}",
            "post",
            client.post(f"/card/deactivate/{card_id}", headers=service),
        )
        _check(schema, "/payment/cryptopay", "post", client.post("/payment/cryptopay", json={}))
        challenge = payment_body(gateway, new_invoice(), card=VISA_3DS)
        tok = token(client, invoice=challenge["invoiceId"])["access_token"]
        assert _check(schema, "/payment/cryptopay", "post", cryptopay(client, tok, challenge))[
            "secure3D"
        ]
        user = client.post(
            "/oauth2/token",
            data={
                "grant_type": "password",
                "username": sandbox.CABINET_EMAIL,
                "password": sandbox.CABINET_PASSWORD,
                "client_id": sandbox.CLIENT_ID,
                "client_secret": sandbox.CLIENT_SECRET,
            },
        )
        _check(schema, "/oauth2/token", "post", user)
        dates = ["2000-01-01T00:00:00Z", "2100-01-01T00:00:00Z"]
        search = {
            "searchParameters": [
                {"name": "created_date", "method": "between", "searchParameter": dates}
            ]
        }
        bearer = {"Authorization": f"Bearer {user.json()['access_token']}"}
        found = _check(
            schema, "/operations", "post", client.post("/operations", json=search, headers=bearer)
        )
        assert found["records"]
        _check(
            schema, "/operations", "post", client.post("/operations", json=search, headers=service)
        )


def test_plain_routes_answer_as_fastapis_did(gateway: Gateway) -> None:
    """token and cryptopay are served by Starlette routes in front of FastAPI's
    (tolem.app._serve_plainly): the same answers to the wrong method, to a preflight,
    under every prefix, and the same route label in the metrics."""
    with gateway.client() as client:
        for path in ("/oauth2/token", "/epay2/oauth2/token", "/payment/cryptopay"):  # POST only
            wrong = client.get(path)
            assert wrong.status_code == 405, (path, wrong.text)
            assert "POST" in wrong.headers["allow"]
            preflight = client.options(
                path,
                headers={"Origin": "https://shop.kz", "Access-Control-Request-Method": "POST"},
            )
            assert preflight.status_code == 200, path
            assert preflight.headers["access-control-allow-origin"] == "*"
        status = client.get("/api/check-status/payment/transaction/000000000001")
        assert status.status_code == 401, status.text
        assert client.post("/check-status/payment/transaction/000000000001").status_code == 405
        assert client.head("/check-status/payment/transaction/000000000001").status_code == 405
        unauthorized = client.post("/api/payment/cryptopay", json={})
        assert unauthorized.status_code == 401, unauthorized.text
        assert "invoiceId" in unauthorized.json()  # a payment error carries invoice fields
        metrics = client.get("/metrics").text
    assert 'route="/api/payment/cryptopay",status="401"' in metrics
    assert 'route="/api/check-status/payment/transaction/{invoice_id}",status="401"' in metrics


def test_the_busiest_endpoints_are_served_by_the_plain_routes(tmp_path: Path) -> None:
    """The routes that serve token, cryptopay and check-status come before FastAPI's
    (tolem.app._serve_plainly), under every prefix; the test above checks they answer
    as FastAPI's did, this one that they are the ones answering."""
    from starlette.routing import Route

    from tolem.app import _PlainRoute

    app = create_app(Settings(data_dir=tmp_path))
    first = [r for r in app.router.routes[:6] if isinstance(r, Route)]
    assert all(isinstance(r, _PlainRoute) for r in first)
    assert {r.path for r in first} == {
        "/oauth2/token",
        "/epay2/oauth2/token",
        "/payment/cryptopay",
        "/api/payment/cryptopay",
        "/check-status/payment/transaction/{invoice_id}",
        "/api/check-status/payment/transaction/{invoice_id}",
    }
