"""POST /oauth2/token (and the test host's /epay2/oauth2/token)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.responses import Response

from tolem import wire
from tolem.merchants import service as merchants
from tolem.oauth import grants, service
from tolem.oauth.service import TokenError
from tolem.runtime import Runtime, runtime

router = APIRouter(tags=["oauth"])

_MAX_FIELDS = 64

_FORM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["grant_type", "client_id", "client_secret"],
    "properties": {
        name: {"type": "string"}
        for name in (
            "grant_type",
            "scope",
            "client_id",
            "client_secret",
            "terminal",
            "invoiceID",
            "amount",
            "currency",
            "secret_hash",
            "postLink",
            "failurePostLink",
            "username",
            "password",
            "refresh_token",
        )
    },
}


async def _form(request: Request) -> dict[str, str]:
    content_type = request.headers.get("content-type", "")
    if "json" in content_type:
        try:
            data = wire.parse_json_object(await request.body())
        except wire.BodyError as exc:
            raise TokenError("invalid_request", str(exc)) from exc
        fields: dict[str, str] = {}
        for key, value in data.items():
            if isinstance(value, dict | list):
                # str() of an object would be taken as a (wrong) password, an odd
                # invoice: refuse it by name instead.
                raise TokenError("invalid_request", f"{key}: a string or a number is expected")
            fields[key] = "" if value is None else str(value)
        return fields
    if content_type.split(";", 1)[0].strip().lower() == "application/x-www-form-urlencoded":
        # What shops send: parsed at once, as Starlette's parser would (latin-1 bytes,
        # then percent-decoded as UTF-8), at a tenth of its cost.
        pairs = parse_qsl((await request.body()).decode("latin-1"), keep_blank_values=True)
        if len(pairs) > _MAX_FIELDS:
            raise TokenError(
                "invalid_request",
                f"unreadable form body: Too many fields. Maximum number of fields is "
                f"{_MAX_FIELDS}.",
            )
        return _fields(pairs)
    try:
        # One file is let through so that it gets the clear refusal below rather than
        # "Too many files"; the body limit bounds what is spooled.
        form = await request.form(max_files=1, max_fields=_MAX_FIELDS)
    except wire.BodyTooLarge:
        raise  # the BodyLimit middleware answers 413
    except Exception as exc:  # malformed multipart and friends; the message says why
        detail = getattr(exc, "detail", None) or exc  # starlette wraps it in HTTPException
        raise TokenError("invalid_request", f"unreadable form body: {detail}") from exc
    try:
        return _fields(form.multi_items())
    finally:
        await form.close()


def _fields(items: Iterable[tuple[str, str | UploadFile]]) -> dict[str, str]:
    """The form's fields, the first of each name, each a clean text."""
    result: dict[str, str] = {}
    for key, value in items:
        if isinstance(value, UploadFile):
            raise TokenError("invalid_request", f"{key}: files are not accepted")
        problem = wire.text_problem(key) or wire.text_problem(value)
        if problem:
            raise TokenError("invalid_request", f"form field {key!r}: {problem}")
        result.setdefault(key, value)
    return result


@router.post(
    "/oauth2/token",
    summary="Get an access token (client_credentials, password, refresh_token)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/x-www-form-urlencoded": {"schema": _FORM_SCHEMA},
                "multipart/form-data": {"schema": _FORM_SCHEMA},
            },
        }
    },
)
async def token(request: Request) -> Response:
    rt = runtime(request)  # not a dependency: see tolem.runtime.runtime
    form = await _form(request)
    grant = (service.first_field(form, "grant_type") or "").strip()
    if grant in grants.GRANTS:
        return await _user_token(rt, grant, form)

    def issue(session: Session | None) -> service.IssuedToken:
        return service.issue(
            session,
            rt.sealer,
            form,
            ttl=rt.settings.token_ttl,
            directory=rt.db.directory,
            enforce_hosts=not rt.settings.is_sandbox,
        )

    def issue_from_database() -> service.IssuedToken:
        with rt.db.read() as session:
            return issue(session)

    try:  # a merchant read within the last second: no query, no thread
        issued = issue(None)
    except merchants.NotKept:
        issued = await run_in_threadpool(issue_from_database)
    return wire.json_response(
        {
            "access_token": issued.access_token,
            "expires_in": str(issued.expires_in),  # a string, as the live service sends
            "refresh_token": "",
            "scope": issued.scope,
            "token_type": "Bearer",
        },
        headers={"Cache-Control": "no-store"},
    )


async def _user_token(rt: Runtime, grant: str, form: dict[str, str]) -> Response:
    """grant_type=password or refresh_token: a cabinet user's tokens (tolem.oauth.grants)."""

    def issue() -> grants.UserToken | TokenError:
        # A write: a wrong password counts toward the lockout, a refresh token rotates.
        # The refusal is returned, not raised, so that what it counted is committed.
        with rt.db.write() as session:
            run = grants.password_grant if grant == grants.PASSWORD else grants.refresh_grant
            return run(session, rt.sealer, form, ttl=rt.settings.token_ttl)

    issued = await run_in_threadpool(issue)
    if isinstance(issued, TokenError):
        raise issued
    return wire.json_response(
        {
            "access_token": issued.access_token,
            "expires_in": str(issued.expires_in),  # a string, like client_credentials
            "refresh_token": issued.refresh_token,
            "scope": issued.scope,
            "token_type": "Bearer",
        },
        headers={"Cache-Control": "no-store"},
    )
