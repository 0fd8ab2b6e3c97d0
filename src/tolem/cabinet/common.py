"""What every cabinet page shares: cookies, the session, CSRF and Origin checks, the
page frame, languages and signed one-time messages.

A session lives on the server (tolem.cabinet.sessions); the ``tolem_cabinet`` cookie
carries only its token: HttpOnly, SameSite=Strict, Path=/cabinet, Secure over https.
Every POST checks a CSRF token (the session's, or at login a double-submit cookie) and
that an Origin header, if sent, is this gateway's own. Every query is scoped to the
logged-in user's merchant (``Who.merchant_id``).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

from fastapi import Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.responses import RedirectResponse, Response

from tolem.cabinet.sessions import look_up, settle
from tolem.db.base import utcnow
from tolem.merchants.models import Merchant
from tolem.pages import TEXT, render
from tolem.runtime import Runtime

SESSION_COOKIE = "tolem_cabinet"
LOGIN_COOKIE = "tolem_cabinet_login"
LANG_COOKIE = "tolem_cabinet_lang"
COOKIE_PATH = "/cabinet"
LANGUAGES = ("ru", "en")

_PAGE = {"form_action": "'self'", "frame_ancestors": "'none'"}


# --- cookies and origins -------------------------------------------------------------


def _secure(rt: Runtime, request: Request) -> bool:
    return request.url.scheme == "https" or rt.settings.public_base_url.startswith("https")


def set_cookie(
    response: Response, rt: Runtime, request: Request, name: str, value: str, max_age: int | None
) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=COOKIE_PATH,
        secure=_secure(rt, request),
        httponly=True,
        samesite="strict",
    )


def forget_cookie(response: Response, rt: Runtime, request: Request, name: str) -> None:
    response.delete_cookie(
        name,
        path=COOKIE_PATH,
        secure=_secure(rt, request),
        httponly=True,
        samesite="strict",
    )


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower() if parts.scheme and parts.netloc else ""


def same_origin(rt: Runtime, request: Request) -> bool:
    """No Origin header (older browsers, curl), or this gateway's own origin: the public
    one, or the one the request was addressed to (its Host header). ``Origin: null``
    (sandboxed frames, some redirects) is refused, and so is a browser's own word that
    the request came from another site (Sec-Fetch-Site)."""
    if request.headers.get("sec-fetch-site", "same-origin") in ("cross-site", "same-site"):
        return False
    sent = request.headers.get("origin")
    if sent is None:
        return True
    own = {_origin(rt.settings.effective_public_base_url)}
    host = request.headers.get("host")
    if host:
        own.add(f"{request.url.scheme}://{host}".lower())
    return sent.strip().lower() in own


def same(a: str, b: str) -> bool:
    """Constant-time equality of two non-empty strings."""
    return bool(a) and bool(b) and hmac.compare_digest(a.encode(), b.encode())


async def read_form(request: Request, max_fields: int = 16) -> dict[str, str]:
    form = await request.form(max_files=0, max_fields=max_fields)
    return {k: v[:2048] for k, v in form.multi_items() if not isinstance(v, UploadFile)}


# --- pages ---------------------------------------------------------------------------


def language(request: Request) -> tuple[str, bool]:
    """The page language and whether it was just chosen (then the cookie remembers it)."""
    chosen = request.query_params.get("lang", "")
    if chosen in LANGUAGES:
        return chosen, True
    remembered = request.cookies.get(LANG_COOKIE, "")
    return (remembered if remembered in LANGUAGES else "ru"), False


def texts(request: Request) -> dict[str, str]:
    return TEXT.get(language(request)[0], TEXT["ru"])


#: Query parameters a language switch drops: the language itself, and a signed message
#: written in the old language.
_NOT_KEPT = {"lang", "outcome", "message", "sig"}


def lang_links(request: Request, status_code: int = 200) -> dict[str, str]:
    """Where each language link leads: this page with its filters (a GET that was
    answered; a refused query is not repeated, since it may hold what must not be shown
    again, such as a whole card number typed as a filter), or, for the answer to a POST
    (a confirmation, a form with errors), the page it belongs to — the transaction, or
    the section — since a link cannot repeat a POST."""
    if request.method == "GET":
        path = request.url.path
        kept = [
            (k, v)
            for k, v in request.query_params.multi_items()
            if k not in _NOT_KEPT and status_code < 400
        ]
    else:
        parts = request.url.path.strip("/").split("/")
        keep = 3 if parts[1:2] == ["transactions"] and len(parts) > 3 else 2
        path = "/" + "/".join(parts[:keep])
        kept = []
    return {code: f"{path}?{urlencode([*kept, ('lang', code)])}" for code in LANGUAGES}


def page(
    rt: Runtime, request: Request, template: str, *, status_code: int = 200, **context: Any
) -> Response:
    lang, chosen = language(request)
    response = render(
        template,
        lang=lang,
        status_code=status_code,
        languages=LANGUAGES,
        lang_links=lang_links(request, status_code),
        **_PAGE,
        **context,
    )
    # Chromium sends "Origin: null" with every POST of a no-referrer page; same-origin
    # keeps the Origin check working and still tells other sites nothing.
    response.headers["Referrer-Policy"] = "same-origin"
    if chosen:
        set_cookie(response, rt, request, LANG_COOKIE, lang, 365 * 24 * 3600)
    return response


def redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303, headers={"Cache-Control": "no-store"})


def to_login(rt: Runtime, request: Request) -> Response:
    response = redirect("/cabinet/login")
    if SESSION_COOKIE in request.cookies:
        forget_cookie(response, rt, request, SESSION_COOKIE)
    return response


def forbidden(rt: Runtime, request: Request) -> Response:
    return page(rt, request, "cabinet_error.html", status_code=403, user=None, error="forbidden")


def not_found(rt: Runtime, request: Request, who: Who, error: str = "not_found") -> Response:
    return page(
        rt, request, "cabinet_error.html", status_code=404, user=who, csrf=who.csrf, error=error
    )


# --- the session ---------------------------------------------------------------------


@dataclass(frozen=True)
class Who:
    """The logged-in cabinet user, as every page needs it."""

    user_id: str
    email: str
    merchant_id: str
    merchant_name: str
    csrf: str

    @property
    def actor(self) -> str:
        """How operations record who ran them."""
        return f"cabinet:{self.email}"


def _who(rt: Runtime, token: str | None) -> Who | None:
    """The session's user: read in a read-only transaction; a write only when the
    session ended (deleted) or its last visit is due an update (every 30 s at most)."""
    now = utcnow()
    with rt.db.read() as session:
        found = look_up(session, token, now)
        if found is None:
            return None
        user = found.user
        merchant = session.get(Merchant, user.merchant_id) if user is not None else None
    if found.ended or found.stale:
        with rt.db.write() as session:
            settle(session, found, now)
    if found.ended or user is None:
        return None
    return Who(
        user_id=user.id,
        email=user.email,
        merchant_id=user.merchant_id,
        merchant_name=merchant.name if merchant else "",
        csrf=found.row.csrf_token,
    )


async def who_is(rt: Runtime, request: Request) -> Who | None:
    """The user whose session cookie came with the request, if it is live."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    return await run_in_threadpool(_who, rt, token)


async def signed_in(rt: Runtime, request: Request) -> Who | Response:
    """The user of a GET, or the redirect to the login page."""
    who = await who_is(rt, request)
    return to_login(rt, request) if who is None else who


async def posted(
    rt: Runtime, request: Request, max_fields: int = 16
) -> tuple[Who, dict[str, str]] | Response:
    """The user and form of a POST, or the answer that refuses it: another site, no
    live session, a missing or wrong CSRF token."""
    form = await read_form(request, max_fields)
    if not same_origin(rt, request):
        return forbidden(rt, request)
    who = await who_is(rt, request)
    if who is None:
        return to_login(rt, request)
    if not same(form.get("csrf", ""), who.csrf):
        return forbidden(rt, request)
    return who, form


# --- signed values -------------------------------------------------------------------


def mac(who: Who, *parts: str) -> str:
    """An HMAC keyed by the session's CSRF token: valid for this session only."""
    message = "\x1f".join(parts).encode()
    return hmac.new(who.csrf.encode(), message, hashlib.sha256).hexdigest()


def flash_url(who: Who, path: str, outcome: str, message: str) -> str:
    """``path`` with a message only this session's pages can show (signed)."""
    sig = mac(who, "flash", path, outcome, message)
    return f"{path}?{urlencode({'outcome': outcome, 'message': message, 'sig': sig})}"


def flash(request: Request, who: Who) -> tuple[str, str]:
    """The signed message of ``flash_url`` on this page, or ("", "")."""
    q = request.query_params
    outcome, message = q.get("outcome", ""), q.get("message", "")[:500]
    if outcome in ("ok", "error") and same(
        q.get("sig", ""), mac(who, "flash", request.url.path, outcome, message)
    ):
        return outcome, message
    return "", ""
