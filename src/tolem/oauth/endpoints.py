"""POST /oauth2/token (and the test host's /epay2/oauth2/token)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.responses import Response

from tolem import wire
from tolem.oauth import service
from tolem.oauth.service import TokenError
from tolem.runtime import Runtime, runtime

router = APIRouter(tags=["oauth"])

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
        return {k: "" if v is None else str(v) for k, v in data.items()}
    try:
        form = await request.form(max_files=0, max_fields=64)
    except Exception as exc:  # malformed multipart and friends; the message says why
        raise TokenError("invalid_request", f"unreadable form body: {exc}") from exc
    result: dict[str, str] = {}
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            raise TokenError("invalid_request", f"{key}: files are not accepted")
        result.setdefault(key, value)
    return result


@router.post(
    "/oauth2/token",
    summary="Get an access token (client_credentials)",
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
async def token(request: Request, rt: Annotated[Runtime, Depends(runtime)]) -> Response:
    form = await _form(request)

    def issue() -> service.IssuedToken:
        with rt.db.read() as session:
            return service.issue(session, rt.sealer, form, ttl=rt.settings.token_ttl)

    issued = await run_in_threadpool(issue)
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
