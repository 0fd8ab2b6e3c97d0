"""Request ids, JSON logs, /metrics, /healthz and /readyz, over real HTTP."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support import (
    Gateway,
    cryptopay,
    new_invoice,
    pay,
    payment_body,
    query,
    served_in_a_thread,
    start_gateway,
    token,
)
from tolem.app import create_app
from tolem.config import Settings
from tolem.db.engine import Database
from tolem.processor.simulator import Simulator
from tolem.testing import free_port

DECLINE_484 = ("5578342710750560", "0920", "254")
DECLINE_465 = ("4003032704547597", "0920", "170")
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[^"}]|"(?:[^"\\]|\\.)*")*\})? (\S+)$')


def scrape(client: httpx.Client, **headers: str) -> dict[str, float]:
    """Every sample of /metrics, keyed by name and labels as written."""
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: dict[str, float] = {}
    for line in response.text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = SAMPLE.match(line)
        assert match, f"not a Prometheus sample: {line!r}"
        samples[f"{match.group(1)}{match.group(2) or ''}"] = float(match.group(3))
    return samples


def moved(before: dict[str, float], after: dict[str, float], key: str) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


def requests_of(route: str, status: int, method: str = "POST") -> str:
    return f'tolem_http_requests_total{{method="{method}",route="{route}",status="{status}"}}'


def logged(gw: Gateway, *parts: str, timeout: float = 5) -> list[str]:
    """The log lines holding ``parts[0]``, once one holds every part (an access line is
    written just after the answer has gone out)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [line for line in gw.log_text().splitlines() if parts[0] in line]
        if any(all(part in line for part in parts) for line in lines):
            return lines
        if time.monotonic() > deadline:
            raise AssertionError(f"no line with {parts} in the log")
        time.sleep(0.05)


# --- Request ids ---------------------------------------------------------------------


def test_every_answer_carries_a_request_id_and_every_line_of_the_request_has_it(
    gateway: Gateway,
) -> None:
    with gateway.client() as client:
        first = client.get("/healthz")
        second = client.get("/healthz")
        kept = client.get("/healthz", headers={"X-Request-ID": "shop-42.retry:1_a"})
        replaced = [
            client.get("/healthz", headers={"X-Request-ID": bad}).headers["x-request-id"]
            for bad in ("x" * 65, "has space", 'quote"', "4405639704015096", "ключ".encode())
        ]
        invoice = new_invoice()
        tok = token(client, invoice=invoice)["access_token"]
        paid = cryptopay(client, tok, payment_body(gateway, invoice))
    ids = [first.headers["x-request-id"], second.headers["x-request-id"]]
    assert all(re.fullmatch(r"[0-9a-f]{16}", rid) for rid in ids) and ids[0] != ids[1]
    assert kept.headers["x-request-id"] == "shop-42.retry:1_a"
    assert all(re.fullmatch(r"[0-9a-f]{16}", rid) for rid in replaced), replaced
    # The payment's own line and its access line carry the payment request's id.
    rid = paid.headers["x-request-id"]
    lines = logged(gateway, f" {rid} ", "tolem.access")
    assert any(f"payment {paid.json()['id']}" in line for line in lines), lines
    assert any('"POST /payment/cryptopay HTTP/1.1" 200' in line for line in lines), lines
    assert logged(gateway, " shop-42.retry:1_a ", "tolem.access")


@contextmanager
def gateway_with_a_failing_route(tmp_path: Path) -> Iterator[str]:
    """tolem's own app, served by uvicorn over real HTTP, with one more route that
    raises: an unhandled error, as a bug anywhere in a route would be."""
    settings = Settings(
        data_dir=tmp_path,
        database_url=f"sqlite:///{tmp_path / 'tolem.db'}",
        postlink_worker=False,
    )
    app = create_app(settings)

    async def broken() -> None:
        raise RuntimeError("a bug in a route")

    app.add_api_route("/broken", broken, methods=["GET", "POST"])
    with served_in_a_thread(app) as base:
        yield base


def test_an_unhandled_error_answers_500_with_the_request_id(tmp_path: Path) -> None:
    with gateway_with_a_failing_route(tmp_path) as base:
        # One connection each: uvicorn closes the one an unhandled error came through.
        mine = httpx.post(f"{base}/broken", headers={"X-Request-ID": "shop-7.crash"})
        new = httpx.get(f"{base}/broken")
        also = httpx.get(f"{base}/broken")
        fine = httpx.get(f"{base}/healthz")
    for answer in (mine, new, also):
        assert answer.status_code == 500, answer.text
        assert answer.json() == {"code": 461, "message": "System error"}
    assert mine.headers["x-request-id"] == "shop-7.crash"
    assert re.fullmatch(r"[0-9a-f]{16}", new.headers["x-request-id"]), new.headers
    assert new.headers["x-request-id"] != also.headers["x-request-id"]
    # The request after it has its own id: the failed one's did not stay behind.
    assert fine.status_code == 200
    assert fine.headers["x-request-id"] not in (new.headers["x-request-id"], "shop-7.crash")


def test_json_log_lines(tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'tolem.db'}"
    env = {"TOLEM_LOG_FORMAT": "json"}
    with start_gateway(tmp_path, database, extra_env=env) as gw, gw.client() as client:
        response = pay(gw, client, card=DECLINE_484)
        client.get("/no/such/page", headers={"X-Request-ID": "abc"})
    assert response.status_code == 400
    records = [json.loads(line) for line in gw.log_text().splitlines() if line.startswith("{")]
    assert records, gw.log_text()
    assert all({"time", "level", "logger", "message", "request_id"} <= set(r) for r in records)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", r["time"]) for r in records)
    rid = response.headers["x-request-id"]
    mine = [r for r in records if r["request_id"] == rid]
    access = [r for r in mine if r["logger"] == "tolem.access"]
    assert len(access) == 1, mine
    assert access[0]["method"] == "POST" and access[0]["path"] == "/payment/cryptopay"
    assert access[0]["status"] == 400 and access[0]["route"] == "/payment/cryptopay"
    assert 0 < access[0]["duration_ms"] < 30_000
    assert any(r["logger"] == "tolem.payments" and "code=484" in r["message"] for r in mine)
    missing = [r for r in records if r["request_id"] == "abc"]
    assert missing and missing[0]["status"] == 404 and missing[0]["route"] == "unmatched"
    # Records outside a request (start-up) have none.
    assert any(r["request_id"] == "-" and "ready" in r["message"] for r in records)


# --- /metrics ------------------------------------------------------------------------


def test_metrics_move_with_payments_and_postlinks(gateway: Gateway) -> None:
    with gateway.client() as client:
        before = scrape(client)
        approved = [pay(gateway, client) for _ in range(3)]
        declined = [pay(gateway, client, card=DECLINE_484) for _ in range(2)]
        declined.append(pay(gateway, client, card=DECLINE_465))
        invoice = new_invoice()
        tok = token(client, invoice=invoice)["access_token"]
        paid_invoice = approved[0].json()["invoiceID"]
        client.get(
            f"/check-status/payment/transaction/{paid_invoice}",
            headers={"Authorization": f"Bearer {tok}"},
        )
        client.get(f"/no/such/{invoice}")
        # Answered before routing: a CORS preflight and a body over the limit.
        preflight = {"Origin": "https://shop.kz", "Access-Control-Request-Method": "POST"}
        client.options("/payment/cryptopay", headers=preflight)
        client.post("/payment/cryptopay", content=b"x" * 70_000)
        after = scrape(client)
    assert [r.status_code for r in approved] == [200] * 3
    assert [r.status_code for r in declined] == [400] * 3
    assert moved(before, after, requests_of("/payment/cryptopay", 200)) == 3
    assert moved(before, after, requests_of("/payment/cryptopay", 400)) == 3
    assert moved(before, after, requests_of("/oauth2/token", 200)) == 7
    template = "/check-status/payment/transaction/{invoice_id}"
    assert moved(before, after, requests_of(template, 200, "GET")) == 1
    assert moved(before, after, requests_of("unmatched", 404, "GET")) == 1
    assert moved(before, after, requests_of("unrouted", 200, "OPTIONS")) == 1
    assert moved(before, after, requests_of("unrouted", 413)) == 1
    assert not any(invoice in key for key in after), "a raw path became a label"
    # The histogram counts the same requests, in cumulative buckets.
    labels = 'method="POST",route="/payment/cryptopay",status="200"'
    count = f"tolem_http_request_duration_seconds_count{{{labels}}}"
    inf = f'tolem_http_request_duration_seconds_bucket{{{labels},le="+Inf"}}'
    assert moved(before, after, count) == 3 and after[inf] == after[count]
    buckets = [
        v
        for k, v in after.items()
        if k.startswith("tolem_http_request_duration_seconds_bucket{" + labels)
    ]
    assert buckets == sorted(buckets)
    assert moved(before, after, f"tolem_http_request_duration_seconds_sum{{{labels}}}") > 0
    # Outcomes by reason, read from the database.
    assert moved(before, after, 'tolem_payments_last_5m{outcome="approved",reason_code="0"}') == 3
    assert moved(before, after, 'tolem_payments_last_5m{outcome="declined",reason_code="484"}') == 2
    assert moved(before, after, 'tolem_payments_last_5m{outcome="declined",reason_code="465"}') == 1
    # Every payment wrote a postLink; this gateway delivers none, so they queue.
    assert moved(before, after, "tolem_postlinks_pending") == 6
    [[pending]] = query(
        gateway.database_url, "SELECT count(*) FROM notifications WHERE state = 'pending'"
    )
    assert after["tolem_postlinks_pending"] == pending
    assert after["tolem_postlinks_due"] >= 6
    assert after["tolem_postlinks_lag_seconds"] > 0
    assert (
        after["tolem_postlinks_oldest_pending_age_seconds"] >= after["tolem_postlinks_lag_seconds"]
    )
    assert after["tolem_database_up"] == 1
    assert after['tolem_info{version="0.1.0",mode="sandbox"}'] == 1


def test_metrics_of_several_workers_add_up(tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'tolem.db'}"
    with start_gateway(tmp_path, database, workers=2) as gw:
        for _ in range(40):  # a new connection each time, so both workers answer some
            assert httpx.get(f"{gw.base_url}/healthz", timeout=10).status_code == 200
        key = requests_of("/healthz", 200, "GET")
        deadline = time.monotonic() + 10
        while True:
            with gw.client() as client:
                seen = scrape(client).get(key, 0)
            if seen == 40 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        pids = set(re.findall(r"tolem\.access (\d+) \S+ - \"GET /healthz", gw.log_text()))
    assert len(pids) == 2, "both workers should have answered"
    assert seen == 40


def test_metrics_need_the_token_when_one_is_set(tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'tolem.db'}"
    env = {"TOLEM_METRICS_TOKEN": "s3cret-metrics"}
    with start_gateway(tmp_path, database, extra_env=env) as gw, gw.client() as client:
        assert client.get("/metrics").status_code == 401
        wrong = client.get("/metrics", headers={"Authorization": "Bearer s3cret-metricz"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        assert "tolem_" not in wrong.text
        assert scrape(client, Authorization="Bearer s3cret-metrics")["tolem_database_up"] == 1


def acquirer(settings: Settings, db: Database) -> Simulator:
    """TOLEM_ACQUIRER of the production gateway below (production insists on one)."""
    return Simulator(db, root_key=os.urandom(32), acs_url="http://127.0.0.1/acs/pa")


def test_production_closes_metrics_without_a_token(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp_path / "rsa.pem"
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    env = {
        "TOLEM_MODE": "production",
        "TOLEM_RSA_PRIVATE_KEY_FILE": str(pem),
        "TOLEM_TOKEN_KEY": base64.b64encode(os.urandom(32)).decode(),
        "TOLEM_FINGERPRINT_KEY": base64.b64encode(os.urandom(32)).decode(),
        "TOLEM_CARD_KEY": base64.b64encode(os.urandom(32)).decode(),
        "TOLEM_ACQUIRER": f"{__name__}:acquirer",
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).resolve().parent.parent), os.environ.get("PYTHONPATH", "")]
        ),
    }
    database = f"sqlite:///{tmp_path / 'tolem.db'}"
    with start_gateway(tmp_path, database, extra_env=env) as gw, gw.client() as client:
        refused = client.get("/metrics")
        assert refused.status_code == 403 and "TOLEM_METRICS_TOKEN" in refused.text
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200


# --- /healthz and /readyz -------------------------------------------------------------


def test_ready_when_the_database_is_at_the_newest_migration(gateway: Gateway) -> None:
    with gateway.client() as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    [[revision]] = query(gateway.database_url, "SELECT version_num FROM alembic_version")
    assert ready.json() == {"status": "ready", "revision": revision}


def test_not_ready_when_the_schema_is_behind(tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'tolem.db'}"
    with start_gateway(tmp_path, database) as gw, gw.client() as client:
        assert client.get("/readyz").status_code == 200
        [[head]] = query(database, "SELECT version_num FROM alembic_version")
        _execute(database, "UPDATE alembic_version SET version_num = '0009'")
        behind = client.get("/readyz")
        _execute(database, f"UPDATE alembic_version SET version_num = '{head}'")
        again = client.get("/readyz")
    assert behind.status_code == 503
    assert behind.json() == {
        "status": "unavailable",
        "reason": f"database schema at revision 0009, expected {head}",
    }
    assert again.status_code == 200


def _execute(database_url: str, sql: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(sql))
    finally:
        engine.dispose()


@pytest.fixture
def unreachable_database(tmp_path: Path) -> Iterator[str]:
    """A gateway worker (uvicorn, as ``tolem serve`` runs it) whose PostgreSQL URL names
    a closed port: it starts, since the schema is prepared by ``tolem serve`` before the
    workers, but its database cannot be reached."""
    port, closed = free_port(), free_port()
    env = {
        **os.environ,
        "TOLEM_DATA_DIR": str(tmp_path),
        "TOLEM_DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:{closed}/test",
        "TOLEM_POSTLINK_WORKER": "false",
    }
    command = [sys.executable, "-m", "uvicorn", "tolem.app:worker_app", "--factory"]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=15)


def test_not_ready_when_the_database_is_unreachable(unreachable_database: str) -> None:
    with httpx.Client(base_url=unreachable_database, timeout=10) as client:
        assert client.get("/healthz").status_code == 200
        started = time.monotonic()
        ready = client.get("/readyz")
        took = time.monotonic() - started
        metrics = client.get("/metrics")
    assert ready.status_code == 503
    assert ready.json()["status"] == "unavailable"
    assert ready.json()["reason"].startswith("database unreachable"), ready.text
    assert took < 5
    assert metrics.status_code == 200 and "tolem_database_up 0" in metrics.text


# --- The cost of the middleware -------------------------------------------------------


def test_the_request_middleware_costs_little() -> None:
    """20,000 requests through RequestContext around a bare app, against the bare app
    (access line off: it replaces uvicorn's, which costs the same logging machinery)."""
    from tolem.observability import HttpMetrics, RequestContext

    async def bare(scope: object, receive: object, send: object) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b""})  # type: ignore[operator]

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b""}

    async def send(message: object) -> None:
        return None

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/payment/cryptopay",
        "query_string": b"",
        "http_version": "1.1",
        "client": ("127.0.0.1", 5000),
        "headers": [(b"host", b"x"), (b"content-type", b"application/json")],
    }
    wrapped = RequestContext(bare, metrics=HttpMetrics(), access=False)

    async def run(app: object, n: int) -> float:
        start = time.process_time()  # CPU time: other processes on the machine do not count
        for _ in range(n):
            await app(dict(scope), receive, send)  # type: ignore[operator]
        return time.process_time() - start

    n = 20_000
    overheads = []
    for _ in range(3):
        plain = asyncio.run(run(bare, n))
        with_context = asyncio.run(run(wrapped, n))
        overheads.append((with_context - plain) / n)
    best = min(overheads)
    print(f"RequestContext costs {best * 1e6:.1f} µs per request")
    assert best < 30e-6, f"{best * 1e6:.1f} µs per request"
