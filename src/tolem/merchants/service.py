"""Merchants, terminals and their credentials.

ClientSecret storage: HMAC-SHA256 keyed by a random per-merchant salt. Secrets that
tolem issues carry 256 bits of entropy, so a fast keyed hash resists guessing as
well as a slow password hash would, without capping token throughput; the
comparison is constant-time. (The sandbox merchant's secret is public by design.)
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import idna
from sqlalchemy import and_, bindparam, select, update
from sqlalchemy.orm import Session

from tolem import sandbox
from tolem.db.engine import Directory
from tolem.merchants.models import Merchant, Terminal
from tolem.processor.base import Secure3DPolicy

SANDBOX_CLIENT_ID = sandbox.CLIENT_ID
SANDBOX_CLIENT_SECRET = sandbox.CLIENT_SECRET
SANDBOX_TERMINAL_ID = sandbox.TERMINAL_ID
SANDBOX_MERCHANT_NAME = sandbox.MERCHANT_NAME


@dataclass(frozen=True)
class Credentials:
    """What a new merchant is told once: the secret is not stored anywhere."""

    merchant_id: str
    name: str
    client_id: str
    client_secret: str
    terminal_id: str


def digest_secret(salt: str, secret: str) -> str:
    return hmac.new(bytes.fromhex(salt), secret.encode("utf-8"), hashlib.sha256).hexdigest()


def secret_matches(merchant: Merchant, secret: str) -> bool:
    return hmac.compare_digest(digest_secret(merchant.secret_salt, secret), merchant.secret_digest)


def create_merchant(
    session: Session,
    name: str,
    *,
    client_id: str | None = None,
    client_secret: str | None = None,
    terminal_id: str | None = None,
    two_step: bool = True,
    currencies: str = "KZT USD",
    is_test: bool = True,
    secure3d: str = "card",
) -> Credentials:
    name = name.strip()
    if not name:
        raise ValueError("a merchant needs a name")
    if secure3d not in Secure3DPolicy.ALL:
        raise ValueError(f"secure3d must be one of {', '.join(Secure3DPolicy.ALL)}")
    client_id = client_id or f"m_{secrets.token_hex(8)}"
    client_secret = client_secret or secrets.token_urlsafe(32)
    salt = secrets.token_hex(16)
    merchant = Merchant(
        name=name,
        client_id=client_id,
        secret_salt=salt,
        secret_digest=digest_secret(salt, client_secret),
    )
    session.add(merchant)
    session.flush()
    terminal = Terminal(
        merchant_id=merchant.id,
        name=name,
        two_step=two_step,
        currencies=currencies,
        is_test=is_test,
        secure3d=secure3d,
    )
    if terminal_id:
        terminal.id = terminal_id
    session.add(terminal)
    session.flush()
    return Credentials(merchant.id, name, client_id, client_secret, terminal.id)


def seed_sandbox(session: Session) -> bool:
    """Create ePay's public test merchant if it is missing. True if it was created."""
    if find_by_client_id(session, SANDBOX_CLIENT_ID) is not None:
        return False
    create_merchant(
        session,
        SANDBOX_MERCHANT_NAME,
        client_id=SANDBOX_CLIENT_ID,
        client_secret=SANDBOX_CLIENT_SECRET,
        terminal_id=SANDBOX_TERMINAL_ID,
    )
    return True


# Built once: every token and payment runs these, and building a statement costs more
# than running it.
_BY_CLIENT_ID = select(Merchant).where(Merchant.client_id == bindparam("client_id"))


def find_by_client_id(session: Session, client_id: str) -> Merchant | None:
    return session.scalars(_BY_CLIENT_ID, {"client_id": client_id}).first()


def authenticate(session: Session, client_id: str, client_secret: str) -> Merchant | None:
    merchant = find_by_client_id(session, client_id)
    if merchant is None:
        # Spend the same time as a real check so that client ids cannot be probed.
        hmac.compare_digest(digest_secret("00" * 16, client_secret), "0" * 64)
        return None
    return merchant if secret_matches(merchant, client_secret) else None


_WITH_TERMINAL = (
    select(Merchant, Terminal)
    .outerjoin(
        Terminal,
        and_(Terminal.merchant_id == Merchant.id, Terminal.id == bindparam("terminal_id")),
    )
    .where(Merchant.client_id == bindparam("client_id"))
)


#: For a session that no tolem.db.engine.Database made: keeps nothing.
_UNKEPT = Directory(ttl=0)


def directory_of(session: Session) -> Directory:
    """The directory of the database this session belongs to (Database.directory)."""
    found = session.info.get("directory")
    return found if isinstance(found, Directory) else _UNKEPT


def known_credentials(
    session: Session | None,
    client_id: str,
    client_secret: str,
    terminal_id: str,
    *,
    directory: Directory,
) -> tuple[Merchant | None, Terminal | None]:
    """The merchant of these credentials and its terminal, through the :class:`Directory`.

    The terminal is None when the merchant has no terminal of that id (or none was
    named); both are None when the credentials do not match.

    With ``session`` None only the directory is asked: :class:`NotKept` when it does
    not hold the client id (the caller then asks again with a session).
    """
    key = ("client", client_id, terminal_id)
    pair: tuple[Merchant | None, Terminal | None]
    if session is None:
        found, value = directory.get(key)
        if not found:
            raise NotKept(client_id)
        pair = value  # type: ignore[assignment]
    else:
        pair = directory.load(key, session, lambda: _by_client(session, client_id, terminal_id))
    merchant, terminal = pair
    if merchant is None:
        # Spend the same time as a real check so that client ids cannot be probed.
        hmac.compare_digest(digest_secret("00" * 16, client_secret), "0" * 64)
        return None, None
    if not secret_matches(merchant, client_secret):
        return None, None
    return merchant, terminal


class NotKept(LookupError):
    """The directory does not hold this entry: ask the database."""


def _by_client(
    session: Session, client_id: str, terminal_id: str
) -> tuple[Merchant | None, Terminal | None]:
    if not terminal_id:
        return find_by_client_id(session, client_id), None
    row = session.execute(
        _WITH_TERMINAL, {"client_id": client_id, "terminal_id": terminal_id}
    ).first()
    return (None, None) if row is None else (row[0], row[1])


def kept_terminal(session: Session, merchant_id: str, terminal_id: str) -> Terminal | None:
    """:func:`terminal_of` through the :class:`Directory` (read only: not for changes)."""
    return directory_of(session).load(
        ("terminal", merchant_id, terminal_id),
        session,
        lambda: terminal_of(session, merchant_id, terminal_id),
    )


_TERMINAL_OF = select(Terminal).where(
    Terminal.id == bindparam("terminal_id"), Terminal.merchant_id == bindparam("merchant_id")
)


def terminal_of(session: Session, merchant_id: str, terminal_id: str) -> Terminal | None:
    """The terminal, if it belongs to this merchant (queries are merchant-scoped)."""
    return session.scalars(
        _TERMINAL_OF, {"terminal_id": terminal_id, "merchant_id": merchant_id}
    ).first()


def terminals_of(session: Session, merchant_id: str) -> list[Terminal]:
    return list(
        session.scalars(
            select(Terminal)
            .where(Terminal.merchant_id == merchant_id)
            .order_by(Terminal.created_at)
        )
    )


def list_merchants(session: Session) -> list[tuple[Merchant, list[Terminal]]]:
    merchants = session.scalars(select(Merchant).order_by(Merchant.created_at)).all()
    return [(m, terminals_of(session, m.id)) for m in merchants]


# --- terminal settings (the cabinet's Terminals page) ---------------------------------

#: The currencies the cabinet offers; a terminal may hold others (set elsewhere), which
#: the page keeps showing so that saving the form does not drop them unseen.
CURRENCIES = ("KZT", "USD", "EUR", "RUB")
#: Host names a terminal may list.
MAX_HOSTS = 50

_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


#: Why an allowed-hosts entry is refused, by the code HostError carries.
HOST_ERRORS = {
    "scheme": "write the host name only, without http:// or https://",
    "path": "write the host name only, without a path",
    "user": "write the host name only, without a user name",
    "port": "write the host name only, without a port",
    "wildcard": "wildcards are not supported: list each host name",
    "invalid": "not a valid host name",
    "too_many": f"at most {MAX_HOSTS} host names",
}


class HostError(ValueError):
    """An entry of an allowed-hosts list that is not a bare host name, and why
    (``code``, a key of HOST_ERRORS)."""

    def __init__(self, entry: str, code: str) -> None:
        super().__init__(f"{entry}: {HOST_ERRORS[code]}")
        self.entry = entry
        self.code = code


def host_name(entry: str) -> str:
    """One allowed host, normalised: lower case, no trailing dot, internationalised
    names in their DNS (IDNA, "xn--") form. Raises HostError for a URL, a path, a
    port, user info, a wildcard or anything else that is not a host name."""
    text = entry.strip()
    if "://" in text:
        raise HostError(entry, "scheme")
    for mark, code in (("/", "path"), ("@", "user"), (":", "port"), ("*", "wildcard")):
        if mark in text:
            raise HostError(entry, code)
    name = text.rstrip(".")
    try:
        name = name.lower() if name.isascii() else idna.encode(name, uts46=True).decode("ascii")
    except idna.IDNAError:
        raise HostError(entry, "invalid") from None
    labels = name.split(".")
    if not name or len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise HostError(entry, "invalid")
    return name


def parse_hosts(text: str) -> tuple[str, ...]:
    """An allowed-hosts list as typed (one per line; spaces and commas also separate;
    empty lines ignored), normalised and without repeats. Raises HostError."""
    hosts: list[str] = []
    for entry in re.split(r"[\s,]+", text):
        if entry and (name := host_name(entry)) not in hosts:
            hosts.append(name)
    if len(hosts) > MAX_HOSTS:
        raise HostError(hosts[MAX_HOSTS], "too_many")
    return tuple(hosts)


def link_host(url: str) -> str | None:
    """The host of an http(s) link that tolem.fields.link accepted, in the form
    host_name gives allowed hosts; None when parsers may not agree on it.

    urlsplit (which the notification sender connects by) ends the host at the first
    "/", "?" or "#"; a browser, following WHATWG for http(s), also at a backslash. So
    ``https://evil.example\\@shop.kz/`` is shop.kz to urlsplit and httpx but
    evil.example to the cardholder's browser: a backslash before the path is refused.
    """
    try:
        parts = urlsplit(url)
        if "\\" in parts.netloc:
            return None
        host = (parts.hostname or "").rstrip(".")
        return host if host.isascii() else idna.encode(host, uts46=True).decode("ascii")
    except (ValueError, idna.IDNAError):  # not a link fields.link would have accepted
        return None


def link_problem(terminal: Terminal, links: Mapping[str, str]) -> str:
    """Why one of these links (field name -> URL, empty ones skipped) may not be used
    with this terminal, or "". An empty allowed-hosts list allows any host. Production
    mode only: the callers skip the check in sandbox mode."""
    allowed = terminal.allowed_hosts.split()
    if not allowed:
        return ""
    for field, url in links.items():
        if not url:
            continue
        host = link_host(url)
        if host is None:
            return (
                f"{field}: the host cannot be read unambiguously (a backslash before the "
                f"path); terminal {terminal.id} only allows links to its allowed hosts"
            )
        if host not in allowed:
            return f"{field}: host {host} is not among the allowed hosts of terminal {terminal.id}"
    return ""


@dataclass(frozen=True)
class TerminalSettings:
    two_step: bool
    secure3d: str
    currencies: tuple[str, ...]
    allowed_hosts: tuple[str, ...]


def update_terminal(
    session: Session, merchant_id: str, terminal_id: str, settings: TerminalSettings
) -> Terminal | None:
    """Save a terminal's settings, if it is this merchant's; the next token and payment
    read them. None when the merchant has no such terminal (nothing is changed)."""
    if settings.secure3d not in Secure3DPolicy.ALL:
        raise ValueError(f"secure3d must be one of {', '.join(Secure3DPolicy.ALL)}")
    if not settings.currencies:
        raise ValueError("a terminal needs at least one currency")
    terminal = terminal_of(session, merchant_id, terminal_id)
    if terminal is None:
        return None
    terminal.two_step = settings.two_step
    terminal.secure3d = settings.secure3d
    terminal.currencies = " ".join(settings.currencies)
    terminal.allowed_hosts = " ".join(settings.allowed_hosts)
    session.flush()
    directory_of(session).forget()
    return terminal


def rotate_secret(session: Session, merchant_id: str, old_digest: str) -> str | None:
    """A new ClientSecret for the merchant, stored only as salt and digest; the old one
    stops working with this transaction's commit in this process, and within a second in
    the others (their :class:`~tolem.db.engine.Directory`). None if the stored secret is
    no longer ``old_digest`` (rotated meanwhile): one confirmation rotates at most once."""
    secret = secrets.token_urlsafe(32)
    salt = secrets.token_hex(16)
    done = session.execute(
        update(Merchant)
        .where(Merchant.id == merchant_id, Merchant.secret_digest == old_digest)
        .values(secret_salt=salt, secret_digest=digest_secret(salt, secret))
    )
    directory_of(session).forget()
    return secret if done.rowcount == 1 else None  # type: ignore[attr-defined]
