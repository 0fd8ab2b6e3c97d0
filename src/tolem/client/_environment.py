"""Where the SDK sends its requests: the live ePay hosts, or a tolem gateway."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PRODUCTION", "TEST", "Environment"]


@dataclass(frozen=True)
class Environment:
    """The three origins of ePay (EPAY.md section 1); tolem serves all on one.

    ``oauth_url`` + ``/oauth2/token``, ``api_url`` + ``/payment/cryptopay`` (and every
    API path, ``/public.rsa`` too), ``payform_url`` is the hosted page itself.
    ``is_tolem`` turns on what only tolem understands: Idempotency-Key on POSTs,
    which makes them safe to retry.
    """

    name: str
    oauth_url: str
    api_url: str
    payform_url: str
    is_tolem: bool = False

    @classmethod
    def tolem(cls, base_url: str = "http://127.0.0.1:8000") -> Environment:
        """A tolem gateway at ``base_url`` (``./dev serve`` listens on port 8000)."""
        base = base_url.rstrip("/")
        return cls("tolem", base, base, f"{base}/payform/", is_tolem=True)

    def token_url(self) -> str:
        return f"{self.oauth_url}/oauth2/token"

    def api(self, path: str) -> str:
        return f"{self.api_url}/{path.lstrip('/')}"


#: ePay's production hosts.
PRODUCTION = Environment(
    "production",
    oauth_url="https://epay-oauth.homebank.kz",
    api_url="https://epay-api.homebank.kz",
    payform_url="https://epay.homebank.kz/payform/",
)

#: ePay's test hosts (the ``/epay2`` and ``/api`` prefixes are part of them).
TEST = Environment(
    "test",
    oauth_url="https://testoauth.homebank.kz/epay2",
    api_url="https://testepay.homebank.kz/api",
    payform_url="https://test-epay.homebank.kz/payform/",
)
