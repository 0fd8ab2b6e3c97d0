"""/healthz, /readyz and /metrics (Prometheus text format).

HTTP figures come from ``observability.HttpMetrics`` (every worker's, added up). The
payment and postLink figures are read from the database when /metrics is scraped: the
database is the one place that is right whichever worker, ``tolem worker`` process or
host did the work, and reading it costs the payment path nothing. See
docs/operations.md.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import case, func, select, text
from starlette.concurrency import run_in_threadpool

from tolem import __version__
from tolem.config import Settings
from tolem.observability import (
    BUCKETS,
    HttpMetrics,
    RequestContext,
    SharedFigures,
    constant_time_equal,
)

log = logging.getLogger("tolem.monitoring")

#: How long /readyz and /metrics wait for the database.
DATABASE_TIMEOUT = 2.0
#: The window of the payment figures: payments created this long ago or later.
PAYMENT_WINDOW = timedelta(minutes=5)

T = TypeVar("T")


class Probe:
    """One database call at a time: callers that come while one runs share its answer,
    so a hanging database holds one threadpool thread, not one per scrape."""

    def __init__(self) -> None:
        self._task: asyncio.Future[Any] | None = None

    async def run(self, call: Callable[[], T], within: float) -> T:
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(run_in_threadpool(call))
            self._task.add_done_callback(_retrieve)
        result: T = await asyncio.wait_for(asyncio.shield(self._task), within)
        return result


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved even when every waiter has timed out


@dataclass
class Monitoring:
    settings: Settings
    http: HttpMetrics
    shared: SharedFigures | None
    ready_probe: Probe
    figures_probe: Probe
    _head: str | None = None

    def head(self) -> str:
        if self._head is None:
            from alembic.script import ScriptDirectory

            from tolem.db.migrate import MIGRATIONS

            heads = ScriptDirectory(str(MIGRATIONS)).get_heads()
            self._head = ",".join(sorted(heads))
        return self._head


def router(monitoring: Monitoring) -> APIRouter:
    routes = APIRouter(include_in_schema=False)

    @routes.get("/healthz")
    async def healthz() -> Response:
        """The process is alive and answering; nothing else is checked."""
        return JSONResponse({"status": "ok"})

    @routes.get("/readyz")
    async def readyz(request: Request) -> Response:
        """Ready to take payments: keys loaded, database reachable and at the newest
        migration. 503 with the reason otherwise."""
        rt = getattr(request.app.state, "runtime", None)
        if rt is None:
            return _unready("starting: keys and database not loaded yet")

        def revision() -> str:
            with rt.db.engine.connect() as conn:
                rows = conn.execute(text("SELECT version_num FROM alembic_version")).all()
            return ",".join(sorted(row[0] for row in rows))

        try:
            found = await monitoring.ready_probe.run(revision, DATABASE_TIMEOUT)
        except TimeoutError:
            return _unready(f"database did not answer within {DATABASE_TIMEOUT:g} s")
        except Exception as exc:
            log.warning("readiness: database check failed: %s", exc)
            return _unready(f"database unreachable ({type(exc).__name__})")
        head = await run_in_threadpool(monitoring.head)
        if found != head:
            return _unready(f"database schema at revision {found or 'none'}, expected {head}")
        return JSONResponse({"status": "ready", "revision": head})

    @routes.get("/metrics")
    async def metrics(request: Request) -> Response:
        """Prometheus text format; see docs/operations.md for each figure."""
        refusal = _refusal(monitoring.settings, request.headers.get("authorization", ""))
        if refusal is not None:
            return refusal
        rows = monitoring.http.dump()
        if monitoring.shared is not None:
            rows += await run_in_threadpool(monitoring.shared.others)
        lines = _info(monitoring.settings) + _http_lines(rows)
        rt = getattr(request.app.state, "runtime", None)
        if rt is not None:
            try:
                figures = await monitoring.figures_probe.run(
                    lambda: _database_figures(rt.db), DATABASE_TIMEOUT
                )
                lines += ["# TYPE tolem_database_up gauge", "tolem_database_up 1"]
                lines += figures
            except Exception as exc:
                log.warning("metrics: database figures unavailable: %s", exc)
                lines += ["# TYPE tolem_database_up gauge", "tolem_database_up 0"]
        return Response(
            "\n".join(lines) + "\n", media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    return routes


def _unready(reason: str) -> Response:
    return JSONResponse({"status": "unavailable", "reason": reason}, status_code=503)


def _refusal(settings: Settings, authorization: str) -> Response | None:
    if settings.metrics_token:
        scheme, _, given = authorization.partition(" ")
        if scheme.lower() == "bearer" and constant_time_equal(
            given.strip(), settings.metrics_token
        ):
            return None
        return JSONResponse(
            {"code": 401, "message": "metrics need the bearer token TOLEM_METRICS_TOKEN"},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not settings.is_sandbox:
        return JSONResponse(
            {"code": 403, "message": "set TOLEM_METRICS_TOKEN to read metrics in production"},
            status_code=403,
        )
    return None


def _label(value: object) -> str:
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _labels(**labels: object) -> str:
    return "{" + ",".join(f"{name}={_label(value)}" for name, value in labels.items()) + "}"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _info(settings: Settings) -> list[str]:
    return [
        "# HELP tolem_info The running gateway: version and mode.",
        "# TYPE tolem_info gauge",
        f"tolem_info{_labels(version=__version__, mode=settings.mode.value)} 1",
    ]


def _http_lines(rows: Iterable[list[Any]]) -> list[str]:
    merged: dict[tuple[str, str, int], list[float]] = {}
    for method, route, status, *cell in rows:
        key = (str(method), str(route), int(status))
        total = merged.setdefault(key, [0.0] * len(cell))
        for i, value in enumerate(cell):
            total[i] += value
    counts = [
        "# HELP tolem_http_requests_total HTTP requests answered, by route template and status.",
        "# TYPE tolem_http_requests_total counter",
    ]
    histogram = [
        "# HELP tolem_http_request_duration_seconds Time from a request's arrival to the end "
        "of its answer.",
        "# TYPE tolem_http_request_duration_seconds histogram",
    ]
    for (method, route, status), cell in sorted(merged.items()):
        labels = {"method": method, "route": route, "status": status}
        counts.append(f"tolem_http_requests_total{_labels(**labels)} {_number(cell[0])}")
        cumulative = 0.0
        for bound, count in zip((*BUCKETS, float("inf")), cell[2:], strict=True):
            cumulative += count
            le = "+Inf" if bound == float("inf") else repr(bound)
            histogram.append(
                f"tolem_http_request_duration_seconds_bucket{_labels(**labels, le=le)} "
                f"{_number(cumulative)}"
            )
        histogram.append(f"tolem_http_request_duration_seconds_sum{_labels(**labels)} {cell[1]!r}")
        histogram.append(
            f"tolem_http_request_duration_seconds_count{_labels(**labels)} {_number(cell[0])}"
        )
    return counts + histogram


def _database_figures(db: Any) -> list[str]:
    from tolem.notifications.models import Notification, NotificationState
    from tolem.payments.models import Status, Transaction

    now = datetime.now(UTC)
    with db.read() as session:
        payments = session.execute(
            select(Transaction.status, Transaction.reason_code, func.count())
            .where(Transaction.created_at >= now - PAYMENT_WINDOW)
            .group_by(Transaction.status, Transaction.reason_code)
        ).all()
        pending, oldest, due, earliest_due = session.execute(
            select(
                func.count(),
                func.min(Notification.created_at),
                func.coalesce(func.sum(case((Notification.next_attempt_at <= now, 1), else_=0)), 0),
                func.min(Notification.next_attempt_at),
            ).where(Notification.state == NotificationState.PENDING.value)
        ).one()
        failed = session.execute(
            select(func.count()).where(Notification.state == NotificationState.FAILED.value)
        ).scalar_one()
    outcomes: dict[tuple[str, int], int] = {}
    for status, reason_code, count in payments:
        if status == Status.NEW.value:
            key = ("pending", 0)
        elif reason_code == 0:
            key = ("approved", 0)
        else:
            key = ("declined", int(reason_code))
        outcomes[key] = outcomes.get(key, 0) + int(count)
    minutes = int(PAYMENT_WINDOW.total_seconds() // 60)
    lines = [
        f"# HELP tolem_payments_last_{minutes}m Payments created in the last {minutes} minutes, "
        "by outcome (approved, declined, pending) and ePay reason code.",
        f"# TYPE tolem_payments_last_{minutes}m gauge",
    ]
    for (outcome, reason), count in sorted(outcomes.items()):
        lines.append(
            f"tolem_payments_last_{minutes}m{_labels(outcome=outcome, reason_code=reason)} {count}"
        )
    lag = max(0.0, (now - earliest_due).total_seconds()) if due and earliest_due else 0.0
    age = max(0.0, (now - oldest).total_seconds()) if oldest else 0.0
    lines += [
        "# HELP tolem_postlinks_pending postLinks not yet delivered nor given up (the queue).",
        "# TYPE tolem_postlinks_pending gauge",
        f"tolem_postlinks_pending {int(pending)}",
        "# HELP tolem_postlinks_due Pending postLinks whose next attempt is due now.",
        "# TYPE tolem_postlinks_due gauge",
        f"tolem_postlinks_due {int(due)}",
        "# HELP tolem_postlinks_lag_seconds How long the most overdue postLink has waited "
        "past its due time (0 when none is due).",
        "# TYPE tolem_postlinks_lag_seconds gauge",
        f"tolem_postlinks_lag_seconds {lag:.3f}",
        "# HELP tolem_postlinks_oldest_pending_age_seconds Age of the oldest pending postLink.",
        "# TYPE tolem_postlinks_oldest_pending_age_seconds gauge",
        f"tolem_postlinks_oldest_pending_age_seconds {age:.3f}",
        "# HELP tolem_postlinks_failed postLinks given up (retries ran out or address refused).",
        "# TYPE tolem_postlinks_failed gauge",
        f"tolem_postlinks_failed {int(failed)}",
    ]
    return lines


def install(app: FastAPI, settings: Settings) -> None:
    """The three routes, and the request middleware outside every other one.

    Call it last in ``create_app``: middleware added later wraps what was added before.
    """
    http = HttpMetrics()
    shared = (
        SharedFigures(settings.data_dir.resolve() / "metrics") if settings.workers > 1 else None
    )
    app.include_router(router(Monitoring(settings, http, shared, Probe(), Probe())))
    app.add_middleware(
        RequestContext,
        metrics=http,
        access=settings.access_log,
        structured=settings.log_format == "json",
        shared=shared,
    )
