"""OpenAPI at /openapi.json and interactive docs at /docs, with nothing from a CDN."""

from __future__ import annotations

import re

from tests.support import Gateway


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
