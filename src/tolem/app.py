"""The ASGI application: ``create_app()`` builds a gateway from settings."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI
from starlette.concurrency import run_in_threadpool
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tolem import __version__, openapi, wire
from tolem.apidocs import install_docs
from tolem.cabinet.api import router as cabinet_api_router
from tolem.cabinet.dashboard import router as cabinet_dashboard_router
from tolem.cabinet.notifications import router as cabinet_notifications_router
from tolem.cabinet.terminals import router as cabinet_terminals_router
from tolem.cabinet.web import router as cabinet_router
from tolem.cards.endpoints import router as cards_router
from tolem.config import Settings
from tolem.errors import install_handlers
from tolem.hsts import StrictTransport
from tolem.idempotency import Idempotency
from tolem.monitoring import install as install_monitoring
from tolem.notifications.endpoints import router as notifications_router
from tolem.oauth.endpoints import router as oauth_router
from tolem.operations.endpoints import router as status_router
from tolem.payform.endpoints import router as payform_router
from tolem.payments.endpoints import router as payments_router
from tolem.runtime import Runtime
from tolem.secure3d.endpoints import api as secure3d_api
from tolem.secure3d.endpoints import pages as secure3d_pages

log = logging.getLogger("tolem")


class BodyLimit:
    """Refuse request bodies over the limit, before and while they are read."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = str(scope.get("path", ""))
        for name, value in scope["headers"]:
            if name == b"content-length" and not value.isdigit():
                await _refuse(send, path, 400, "invalid Content-Length header")
                return
            if name == b"content-length" and int(value) > self.limit:
                await _refuse(send, path, 413, f"request body larger than {self.limit} bytes")
                return
        received = 0
        limit = self.limit

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise wire.BodyTooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except wire.BodyTooLarge:
            await _refuse(send, path, 413, f"request body larger than {self.limit} bytes")


async def _refuse(send: Send, path: str, status: int, message: str) -> None:
    content: dict[str, object] = {"code": 477, "message": message}
    if "/payment/" in path:  # payment errors always carry ePay's invoice fields
        content |= {"invoiceId": "", "id": "", "reference": "", "accountId": ""}
    await wire.send_json(send, status, content, extra_headers=[(b"connection", b"close")])


def api_router() -> APIRouter:
    """Every API route; mounted at / and again under /api (the test host's prefix)."""
    router = APIRouter()
    # Routes are matched in order: the busiest first.
    router.include_router(payments_router)
    router.include_router(status_router)
    router.include_router(secure3d_api)
    router.include_router(notifications_router)
    router.include_router(cards_router)
    router.include_router(cabinet_api_router)
    return router


async def _expire_secure3d(rt: Runtime) -> None:
    """Fail payments whose 3-D Secure time ran out and settle what a crash left
    unfinished (tolem.recovery, also once at start-up); every worker may run this safely."""
    from tolem.idempotency import sweep as idempotency_sweep
    from tolem.recovery import interval_of, sweep_safely
    from tolem.secure3d.service import expire_stale

    interval = interval_of(rt)
    await run_in_threadpool(sweep_safely, rt)  # at start-up: what the last run left
    while True:
        await asyncio.sleep(interval)
        try:
            expired = await run_in_threadpool(expire_stale, rt)
            if expired:
                log.info("3-D Secure expired for %d payments", expired)
            await run_in_threadpool(idempotency_sweep, rt)  # keys older than 24 hours
        except Exception:
            log.exception("3-D Secure expiry sweep failed; retrying")
        await run_in_threadpool(sweep_safely, rt)  # logs its own failures


def _freeze_heap() -> None:
    """Leave what start-up made (modules, the app, the schema: most of the heap) out of
    the garbage collector's full collections.

    Under load, objects of the requests in flight outlive the young generations' passes,
    and every few seconds enough of them had reached the oldest that the collector went
    through the whole heap: 85-90 ms with the event loop stopped, the p99 of cryptopay
    (BENCHMARKS.md, "Fifth round"). Frozen, start-up's objects are skipped by every
    collection, and a full one takes 3-4 ms. Reference counting still frees them; only
    a cycle among them made unreachable later would stay (start-up's objects live as
    long as the process).
    """
    gc.collect()  # start-up's own garbage is not kept forever
    gc.freeze()


def create_app(
    settings: Settings | None = None, *, prepare: bool = True, freeze_heap: bool = False
) -> FastAPI:
    """The gateway's ASGI app. ``freeze_heap``: for a serving process (``tolem serve``'s
    workers), see :func:`_freeze_heap`."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        rt = Runtime.start(settings)
        if prepare:
            from tolem.db.migrate import prepare_database

            prepare_database(rt.db, sandbox=settings.is_sandbox)
        app.state.runtime = rt
        sweeper = asyncio.create_task(_expire_secure3d(rt))
        stop = asyncio.Event()
        delivery: asyncio.Task[None] | None = None
        if settings.postlink_worker:
            from tolem.notifications.delivery import DeliveryWorker

            delivery = asyncio.create_task(DeliveryWorker(rt).run(stop))
        if freeze_heap:
            _freeze_heap()
        log.info("tolem %s ready (%s mode)", __version__, settings.mode.value)
        try:
            yield
        finally:
            stop.set()  # the worker finishes the attempts under way, then returns
            sweeper.cancel()
            for task in (sweeper, delivery):
                if task is None:
                    continue
                with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                    await asyncio.wait_for(task, settings.postlink_timeout + 2)
            await rt.db.dispose_on_the_loop()
            rt.close()

    app = FastAPI(
        title="tolem",
        version=__version__,
        description="A payment gateway that speaks Halyk Bank ePay's merchant protocol.",
        lifespan=lifespan,
        default_response_class=wire.EpayJSONResponse,
        docs_url=None,  # served by install_docs, without a CDN
        redoc_url=None,
    )
    install_handlers(app)
    install_docs(app)
    openapi.install(app)
    app.include_router(oauth_router)
    app.include_router(oauth_router, prefix="/epay2", include_in_schema=False)
    app.include_router(api_router())
    app.include_router(api_router(), prefix="/api", include_in_schema=False)
    app.include_router(secure3d_pages)
    app.include_router(payform_router)
    app.include_router(cabinet_router)
    app.include_router(cabinet_dashboard_router)
    app.include_router(cabinet_notifications_router)
    app.include_router(cabinet_terminals_router)
    _serve_plainly(app)
    # Shops call the token endpoint and the API from browser pages.
    app.add_middleware(Idempotency)  # inside the body limit: bodies are already bounded
    app.add_middleware(
        CORSMiddleware,
        allow_origins=["*"],
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=["*"],
        max_age=600,
    )
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    if not settings.is_sandbox:
        app.add_middleware(StrictTransport)  # pages: https only, behind the TLS proxy
    install_monitoring(app, settings)  # last: its middleware is the outermost
    return app


class _PlainRoute(Route):
    """A Starlette route that names itself in the scope, as FastAPI's routes do (the
    metrics label requests with its path: tolem.observability)."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child = super().matches(scope)
        if match is not Match.NONE:
            child["route"] = self
        return match, child


def _serve_plainly(app: FastAPI) -> None:
    """Serve the busiest endpoints (token, cryptopay, check-status) without FastAPI's
    request handling.

    They read the request themselves (no dependencies; check-status takes its invoice
    from the path) and return a Response, so FastAPI's handler (solving an empty set
    of dependencies, routing through the included routers) only cost CPU: about a
    tenth of a payment's, and of a token's a third (BENCHMARKS.md, "Fourth round").
    A Starlette route for each path, first in the list, serves them; the exception
    handlers apply as before (Starlette's route wrapper calls the same ones). FastAPI's
    routes stay behind them for /openapi.json.
    """
    from tolem.oauth.endpoints import token
    from tolem.operations.endpoints import check_status
    from tolem.payments.endpoints import cryptopay

    async def status(request: Request) -> Response:
        return await check_status(request.path_params["invoice_id"], request)

    plain = [
        _PlainRoute(f"{prefix}{path}", endpoint, methods=[method], name=name)
        for path, method, endpoint, name, prefixes in (
            ("/oauth2/token", "POST", token, "token", ("", "/epay2")),
            ("/payment/cryptopay", "POST", cryptopay, "cryptopay", ("", "/api")),
            (
                "/check-status/payment/transaction/{invoice_id}",
                "GET",
                status,
                "check_status",
                ("", "/api"),
            ),
        )
        for prefix in prefixes
    ]
    for route in plain:
        if route.methods:
            route.methods.discard("HEAD")  # Starlette adds it to GET; FastAPI's did not
    app.router.routes[:0] = plain


def worker_app() -> FastAPI:
    """The factory ``tolem serve`` hands uvicorn: settings from the environment."""
    from tolem.logs import configure_logging

    settings = Settings()
    configure_logging(settings)
    return create_app(settings, prepare=False, freeze_heap=True)
