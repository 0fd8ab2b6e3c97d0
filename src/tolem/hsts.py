"""Strict-Transport-Security on pages, in production mode (behind a TLS proxy).

A browser that has seen it on a page of this gateway (the payment page, 3-D Secure, the
cabinet) goes to it over https only, for a year: no plain-http first request for an
attacker on the network to answer. Browsers ignore it on plain http, so sending it there
does no harm. API answers (JSON) are left as they are: servers, not browsers, read them.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_AGE = 31_536_000  # one year
HEADER = (b"strict-transport-security", f"max-age={MAX_AGE}".encode())


class StrictTransport:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_page(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message.get("headers", [])
                for name, value in headers:
                    if name == b"content-type":
                        if value.startswith(b"text/html"):
                            message["headers"] = [*headers, HEADER]
                        break
            await send(message)

        await self.app(scope, receive, send_page)
