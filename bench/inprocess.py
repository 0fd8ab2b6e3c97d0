"""CPU per request inside the gateway: the ASGI app called directly, no HTTP, no load.

    .venv/bin/python bench/inprocess.py                    # token, cryptopay, status
    .venv/bin/python bench/inprocess.py --requests 2000 --what token
    .venv/bin/python bench/inprocess.py --inline           # database work on the calling
                                                           # thread (no thread-pool hop)
    .venv/bin/python bench/inprocess.py --profile          # cProfile (CPU time), top 40
    .venv/bin/python bench/inprocess.py --postlinks 2000   # the delivery worker alone

``bench/run.py`` measures the gateway as its users meet it: over HTTP, under load, next
to the floor. This one measures what a change costs while working on it. It builds a
sandbox gateway on SQLite in a temporary directory, prepares every request first
(tokens, cryptograms), warms up, then sends the requests one after another through the
ASGI app and reports the process's CPU time per request (``time.process_time``: every
thread of the process, none of another). Requests go one at a time, so the figure has
no queueing in it; the thread-pool hop of an idle event loop is in it unless
``--inline``. ``--postlinks N`` fills the outbox with N notifications to a receiver in
the same process and times the delivery worker until all are delivered. ``--concurrency
N`` keeps N requests in flight instead (N clients on the loop, each one after another):
payments then share commits as they do under load (tolem.db.group).

Numbers on a shared machine move by 10-30 % from run to run: compare the lowest of a
few runs, alternating the two versions.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import sys
import tempfile
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

Request = tuple[str, str, bytes, list[tuple[bytes, bytes]]]
FORM = [(b"content-type", b"application/x-www-form-urlencoded")]


class Harness:
    """A sandbox gateway's ASGI app and a way to call it."""

    def __init__(self, data_dir: Path) -> None:
        from tolem.app import create_app
        from tolem.config import Settings

        self.app = create_app(Settings(data_dir=data_dir))

    async def call(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> tuple[int, bytes]:
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.Event().wait()  # no disconnect while the answer is written
            raise AssertionError("unreachable")

        status = 0
        chunks: list[bytes] = []

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [
                (b"host", b"127.0.0.1:8000"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
            "state": {},
        }
        await self.app(scope, receive, send)  # type: ignore[arg-type]
        return status, b"".join(chunks)


def token_body(invoice: str) -> bytes:
    from tolem import sandbox

    return urlencode(
        {
            "grant_type": "client_credentials",
            "client_id": sandbox.CLIENT_ID,
            "client_secret": sandbox.CLIENT_SECRET,
            "terminal": sandbox.TERMINAL_ID,
            "invoiceID": invoice,
            "amount": "100",
            "currency": "KZT",
            "scope": "payment",
        }
    ).encode()


async def prepare(h: Harness, what: str, count: int) -> list[Request]:
    """The requests of one kind, built before the clock starts (payments are made
    first for the status checks)."""
    from tolem import sandbox
    from tolem.client._helpers import encrypt_json

    if what == "token":
        return [("POST", "/oauth2/token", token_body(f"3{n:011d}"), FORM) for n in range(count)]
    _, pem = await h.call("GET", "/public.rsa")
    public = load_pem_public_key(pem)
    assert isinstance(public, rsa.RSAPublicKey)
    payments: list[Request] = []
    for n in range(count):
        invoice = f"4{n:011d}"
        status, answer = await h.call("POST", "/oauth2/token", token_body(invoice), FORM)
        assert status == 200, answer
        token = json.loads(answer)["access_token"]
        card = {
            "hpan": "4405639704015096",
            "expDate": "0125",
            "cvc": "815",
            "terminalId": sandbox.TERMINAL_ID,
        }
        body = {
            "amount": 100,
            "currency": "KZT",
            "name": "JON SNOW",
            "cryptogram": encrypt_json(public, card),
            "invoiceId": invoice,
            "description": "bench",
            "accountId": "1",
            "email": "a@b.kz",
            "phone": "77000000000",
        }
        bearer = (b"authorization", b"Bearer " + token.encode())
        payments.append(
            (
                "POST",
                "/payment/cryptopay",
                json.dumps(body).encode(),
                [bearer, (b"content-type", b"application/json")],
            )
        )
    if what == "pay":
        return payments
    for request in payments:  # status checks of paid invoices
        status, answer = await h.call(*request)
        assert status == 200, answer
    return [
        ("GET", f"/check-status/payment/transaction/4{n:011d}", b"", [request[3][0]])
        for n, request in enumerate(payments)
    ]


async def measure(
    h: Harness, what: str, count: int, warmup: int, profile: bool, concurrency: int = 1
) -> float:
    requests = await prepare(h, what, count + warmup)
    for request in requests[:warmup]:
        status, answer = await h.call(*request)
        assert status == 200, answer
    requests = requests[warmup:]
    profiler = cProfile.Profile(time.process_time) if profile else None
    if profiler:
        profiler.enable()
    started = time.process_time()

    async def client(mine: list[Request]) -> None:
        for request in mine:
            status, answer = await h.call(*request)
            assert status == 200, answer

    await asyncio.gather(*(client(requests[n::concurrency]) for n in range(concurrency)))
    spent = time.process_time() - started
    if profiler:
        profiler.disable()
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(40)
    return 1000 * spent / len(requests)


def inline_database_work() -> None:
    """Run what the endpoints hand to the thread pool on the calling thread instead."""
    import starlette.concurrency

    import tolem.oauth.endpoints
    import tolem.operations.endpoints
    import tolem.payments.endpoints

    async def inline(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)

    for module in (
        starlette.concurrency,
        tolem.oauth.endpoints,
        tolem.operations.endpoints,
        tolem.payments.endpoints,
    ):
        module.run_in_threadpool = inline  # type: ignore[attr-defined]


async def postlinks(data_dir: Path, count: int) -> tuple[float, float]:
    """(postLinks per second, ms of CPU per postLink) of one delivery worker."""
    from sqlalchemy import func, select

    from tolem.config import Settings
    from tolem.db.migrate import prepare_database
    from tolem.merchants.service import SANDBOX_TERMINAL_ID, find_by_client_id
    from tolem.notifications import service
    from tolem.notifications.delivery import DeliveryWorker
    from tolem.notifications.models import Notification
    from tolem.payments.models import Transaction
    from tolem.runtime import Runtime

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                await reader.readexactly(length)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    receiver = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = receiver.sockets[0].getsockname()[1]
    rt = Runtime.start(Settings(data_dir=data_dir))
    try:
        prepare_database(rt.db, sandbox=True)
        with rt.db.write() as session:
            merchant = find_by_client_id(session, "test")
            assert merchant is not None
            for n in range(count):
                tx = Transaction(
                    merchant_id=merchant.id,
                    terminal_id=SANDBOX_TERMINAL_ID,
                    invoice_id=f"5{n:011d}",
                    invoice_claim=f"{n:06d}",
                    amount=Decimal("1.00"),
                    currency="KZT",
                    status="AUTH",
                    post_link=f"http://127.0.0.1:{port}/postlink",
                )
                session.add(tx)
                session.flush()
                service.enqueue(session, tx)
        stop = asyncio.Event()
        started, cpu = time.perf_counter(), time.process_time()
        worker = asyncio.create_task(DeliveryWorker(rt).run(stop))
        pending = select(func.count()).where(Notification.state != "delivered")
        while True:
            await asyncio.sleep(0.05)
            with rt.db.read() as session:
                if not session.scalar(pending):
                    break
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        stop.set()
        await worker
    finally:
        rt.close()
        receiver.close()
    return count / wall, 1000 * cpu / count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--what", nargs="+", default=["token", "pay", "status"], choices=["token", "pay", "status"]
    )
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument(
        "--inline",
        action="store_true",
        help="database work on the calling thread (no thread-pool hop)",
    )
    parser.add_argument("--profile", action="store_true", help="cProfile the measured run")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=1,
        help="requests in flight at once (default 1: one after another)",
    )
    parser.add_argument(
        "--postlinks",
        type=int,
        default=0,
        help="instead: deliver N postLinks with one delivery worker",
    )
    args = parser.parse_args(argv)
    if args.inline:
        inline_database_work()
    with tempfile.TemporaryDirectory(prefix="tolem-inprocess-") as tmp:
        if args.postlinks:
            rate, cpu = asyncio.run(postlinks(Path(tmp), args.postlinks))
            print(f"postLinks: {rate:.0f}/s, {cpu:.2f} ms CPU each")
            return 0
        for what in args.what:
            data_dir = Path(tmp) / what
            os.environ["TOLEM_DATA_DIR"] = str(data_dir)

            async def run(what: str = what, data_dir: Path = data_dir) -> float:
                h = Harness(data_dir)
                async with h.app.router.lifespan_context(h.app):
                    return await measure(
                        h, what, args.requests, args.warmup, args.profile, args.concurrency
                    )

            print(f"{what}: {asyncio.run(run()):.3f} ms CPU per request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
