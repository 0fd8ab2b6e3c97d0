"""The token endpoint reads urlencoded forms itself: the same fields as Starlette's parser."""

from __future__ import annotations

import asyncio

import pytest
from starlette.requests import Request

from tolem.oauth.endpoints import _fields, _form
from tolem.oauth.service import TokenError

BODIES = [
    b"grant_type=client_credentials&client_id=test&client_secret=s3cr%2Bt",
    b"a=1&&b=2&",
    b"a&b=&=c",
    b"a=1&a=2",
    b"name=%D0%A2%D3%A9%D0%BB%D0%B5%D0%BC+%2B+x",
    "raw=төлем".encode(),
    b"bad=%zz%4&semi=a;b",
    b"plus=+&space=%20",
    b"",
]


def _request(body: bytes) -> Request:
    sent = False

    async def receive() -> dict[str, object]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/oauth2/token",
        "headers": [(b"content-type", b"application/x-www-form-urlencoded")],
        "query_string": b"",
    }
    return Request(scope, receive)


async def _starlette(body: bytes) -> dict[str, str]:
    form = await _request(body).form()
    return _fields(form.multi_items())


@pytest.mark.parametrize("body", BODIES)
def test_fields_match_starlettes_parser(body: bytes) -> None:
    assert asyncio.run(_form(_request(body))) == asyncio.run(_starlette(body))


def test_more_than_64_fields_are_refused() -> None:
    body = "&".join(f"f{i}=1" for i in range(65)).encode()
    with pytest.raises(TokenError, match="Too many fields"):
        asyncio.run(_form(_request(body)))
    assert len(asyncio.run(_form(_request(body.rsplit(b"&", 1)[0])))) == 64


def test_control_characters_are_refused_by_name() -> None:
    with pytest.raises(TokenError, match="form field 'client_id'"):
        asyncio.run(_form(_request(b"client_id=a%00b")))
