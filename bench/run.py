"""tolem's benchmark: throughput, tail latency, CPU and memory per worker, and the floor.

    .venv/bin/python bench/run.py                       # SQLite and PostgreSQL, 1 and 2
                                                        # workers, scenarios a b c e + floor
    .venv/bin/python bench/run.py --workers 1 2 4 --duration 20 --json out.json
    .venv/bin/python bench/run.py --quick               # 1 s per scenario, SQLite, 1 worker

For each database and worker count it starts ``tolem serve`` as a user would (default
settings, sandbox mode, a fresh data dir; PostgreSQL in a fresh database that is dropped
afterwards, only when reachable), builds every request a scenario sends before the
clock starts (unique invoices, RSA cryptograms, pre-issued tokens), warms up, and runs
each scenario with wrk (bench/lua/*.lua) for ``--duration`` seconds:

    a  POST /oauth2/token for a fresh invoice (client_credentials)
    b  the merchant flow: token for a fresh invoice, then cryptopay with it (2 requests
       per payment; the rate reported is payments per second)
    c  POST /payment/cryptopay with pre-issued invoice-bound tokens
    d  the 3-D Secure flow with pre-issued tokens and a 3-D Secure card: cryptopay, the
       ACS page, the ACS answer (one-time code), /payment/confirm (4 requests per
       payment; the rate is completed payments per second, latency that of the whole
       flow)
    e  GET /check-status/payment/transaction/{invoice} of paid invoices
    f  postLink delivery lag: cryptopay with a postLink to a receiver on 127.0.0.1
       (bench/receiver.py, its own process) at a fixed ``--rate``; lag = arrival at the
       receiver - the notification's created_at (written in the payment's transaction);
       p50/p95/p99 and lost postLinks (must be 0)
    g  racing refunds: 8 partial refunds of 150 KZT of each charged 1,000 KZT payment,
       4 at once from each wrk thread's connections (asked 1,200 > 1,000 charged):
       "would exceed" refusals are expected and counted apart; afterwards the database
       must show no payment refunded beyond its charge and refunds summing to the
       approved ones
    floor  bench/floor.py under uvicorn, same worker count: RSA decryption of the same
       kind of cryptogram plus one durable INSERT; tolem's c is reported as a share of it

Every answer is checked (status 2xx and the body of a success); afterwards the
transactions in the database are counted by status, and every payment must be there
once, approved. Errors must be 0: any error is shown in red and makes the exit code 1.

The warm-up of each scenario also measures its rate, so that the measured run gets
enough pre-built requests (2.5 times what the warm-up rate needs; 1.5 for c, whose
tokens take time to issue); a warm-up that runs out of requests is repeated with four
times as many (up to three times); a thread that runs out in the measured run stops
early and the result says ``exhausted``. Results go to test-artifacts/bench-results.json
unless ``--json`` says otherwise; ``--profile DIR`` samples every worker with py-spy (if
installed) during each measured run. ``--stored-rows N`` bulk-loads N transactions of
the test merchant into the fresh database (COPY on PostgreSQL, executemany on SQLite;
then ANALYZE) before the scenarios run, to compare with an empty database.

CPU is each worker's CPU time during the run over the wall time (100 = one core); peak
RSS is the worker's high-water mark (VmHWM). The load generator's own CPU is reported
as ``wrk_cpu``.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import math
import os
import platform
import secrets
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from rich.console import Console
from rich.table import Table

BENCH = Path(__file__).resolve().parent
LUA = BENCH / "lua"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"

CLIENT_ID = "test"
CLIENT_SECRET = "yF587AV9Ms94qN2QShFzVR3vFnWkhjbAK3sG"  # noqa: S105 - ePay's public test merchant
TERMINAL = "67e34d63-102f-4bd1-898e-370781d0074d"
SCOPE = "webapi usermanagement email_send verification statement statistics payment"
CARD = {"hpan": "4405639704015096", "expDate": "0125", "cvc": "815"}
#: A successful cryptopay answer: HTTP 200 without a 3-D Secure challenge.
PAID = '"secure3D":null'
APPROVED = ("AUTH", "CHARGE")
#: The simulator's 3-D Secure Visa that approves after the challenge (``tolem cards``).
CARD_3DS = {"hpan": "4000003000000006", "expDate": "1230", "cvc": "123"}
#: Scenario g: each payment is charged REFUND_BASE KZT and asked REFUNDS_PER_PAYMENT
#: refunds of REFUND_PART KZT each, more than was charged.
REFUND_BASE, REFUND_PART, REFUNDS_PER_PAYMENT = 1000, 150, 8
REFUSED = "would exceed"
#: accountId of g's payments, to find them in the database afterwards.
REFUND_ACCOUNT = "bench-refund"
#: Invoices of --stored-rows start with 0; the scenarios' never do.
STORED_PREFIX = "0"
ALL_SCENARIOS = ("a", "b", "c", "d", "e", "f", "g")

#: First guesses of each scenario's rate per worker (requests/s), only to size warm-ups.
GUESS = {"a": 1000, "b": 300, "c": 400, "d": 100, "e": 1000, "g": 400, "floor": 2500}
SCENARIO_NAMES = {
    "a": "a token",
    "b": "b token+cryptopay",
    "c": "c cryptopay",
    "d": "d 3-D Secure",
    "e": "e check-status",
    "f": "f postLink lag",
    "g": "g racing refunds",
    "floor": "floor",
}

#: Wide enough for the table when the output is a file or a pipe.
console = Console(width=None if sys.stdout.isatty() else 150)


# --- the machine and its tools --------------------------------------------------------


def ensure_wrk() -> str:
    """wrk's path; installs Debian's ``wrk`` with apt-get when root and missing."""
    found = shutil.which("wrk")
    if found:
        return found
    apt = shutil.which("apt-get")
    if os.geteuid() == 0 and apt:
        console.print("installing Debian's wrk for the benchmark", style="yellow")
        subprocess.run([apt, "update", "-qq"], check=True)  # noqa: S603 - fixed arguments
        subprocess.run(  # noqa: S603 - fixed arguments
            [apt, "install", "-y", "-qq", "wrk"],
            check=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            stdout=subprocess.DEVNULL,
        )
        found = shutil.which("wrk")
        if found:
            return found
    sys.exit("the benchmark needs wrk 4 (https://github.com/wg/wrk): install the 'wrk' package")


def machine() -> dict[str, Any]:
    model = ""
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model or platform.processor(),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def postgres_reachable() -> bool:
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN, connect_timeout=3):
            return True
    except Exception:
        return False


@contextmanager
def fresh_postgres() -> Iterator[str]:
    """A new empty database on the local server (plain ``postgresql://`` URL); dropped after."""
    import psycopg

    name = f"tolem_bench_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- servers --------------------------------------------------------------------------


@dataclass
class Server:
    """A server process (tolem serve or the floor's uvicorn) and its worker processes."""

    url: str
    process: subprocess.Popen[bytes]
    workers: int
    log: Path

    def wait_ready(self, path: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited:\n{self.log.read_text(errors='replace')}")
            with suppress(OSError):
                if get(self.url, path)[0] == 200 and len(self.worker_processes()) == self.workers:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"server not ready:\n{self.log.read_text(errors='replace')}")

    def worker_processes(self) -> list[psutil.Process]:
        main = psutil.Process(self.process.pid)
        if self.workers == 1:
            return [main]
        return [
            child
            for child in main.children()
            if "resource_tracker" not in " ".join(child.cmdline())
        ]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _clean_env() -> dict[str, str]:
    """The environment without any TOLEM_ setting: tolem runs with its defaults."""
    return {k: v for k, v in os.environ.items() if not k.startswith("TOLEM_")}


@contextmanager
def tolem_server(data_dir: Path, database_url: str, workers: int) -> Iterator[Server]:
    port = free_port()
    log = data_dir / "serve.log"
    command = [sys.executable, "-m", "tolem", "serve", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--workers", str(workers)]
    if database_url:
        command += ["--database-url", database_url]
    env = {**_clean_env(), "TOLEM_DATA_DIR": str(data_dir)}
    with open(log, "wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)  # noqa: S603
    server = Server(f"http://127.0.0.1:{port}", process, workers, log)
    try:
        server.wait_ready("/public.rsa")
        yield server
    finally:
        server.stop()


@contextmanager
def floor_server(data_dir: Path, database: str, workers: int) -> Iterator[Server]:
    import floor

    floor.create_schema(database)
    port = free_port()
    log = data_dir / "floor.log"
    command = [sys.executable, "-m", "uvicorn", "floor:app", "--app-dir", str(BENCH)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    command += ["--no-access-log", "--log-level", "warning"]
    env = {
        **_clean_env(),
        "FLOOR_KEY": str(data_dir / "keys" / "rsa-private.pem"),
        "FLOOR_DATABASE": database,
    }
    with open(log, "wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)  # noqa: S603
    server = Server(f"http://127.0.0.1:{port}", process, workers, log)
    try:
        server.wait_ready("/")
        yield server
    finally:
        server.stop()


@dataclass
class Receiver:
    """bench/receiver.py: a shop's postLink endpoint on 127.0.0.1, in its own process."""

    url: str
    process: subprocess.Popen[bytes]

    def arrivals(self) -> dict[str, float]:
        """Each invoice's first arrival (unix time), and how many arrived more than once."""
        status, body = get(self.url, "/arrivals")
        assert status == 200, body
        first: dict[str, float] = {}
        for invoice, at in json.loads(body):
            first[invoice] = min(at, first.get(invoice, at))
        return first

    def count(self) -> int:
        status, body = get(self.url, "/arrivals")
        return len(json.loads(body)) if status == 200 else 0


@contextmanager
def postlink_receiver() -> Iterator[Receiver]:
    port = free_port()
    process = subprocess.Popen(  # noqa: S603 - our own script
        [sys.executable, str(BENCH / "receiver.py"), str(port)],
        stdout=subprocess.PIPE,
        env=_clean_env(),
    )
    try:
        assert process.stdout is not None
        if process.stdout.readline().strip() != b"ready":
            raise RuntimeError("the postLink receiver did not start")
        yield Receiver(f"http://127.0.0.1:{port}", process)
    finally:
        process.terminate()
        process.wait(timeout=10)


# --- requests, built before the clock starts ------------------------------------------


def get(base: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    return request(base, "GET", path, headers=headers)


def request(
    base: str,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    conn: http.client.HTTPConnection | None = None,
) -> tuple[int, bytes]:
    netloc = urllib.parse.urlsplit(base).netloc
    own = conn is None
    conn = conn or http.client.HTTPConnection(netloc, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        if own:
            conn.close()


class Invoices:
    """Invoice numbers of one gateway: 12 digits, the last six never repeated."""

    def __init__(self) -> None:
        self.head = f"{secrets.randbelow(900_000) + 100_000}"
        self.count = 0

    def take(self, n: int) -> list[str]:
        if self.count + n >= 1_000_000:
            raise RuntimeError("a gateway's invoices ran out (a million per run)")
        start, self.count = self.count, self.count + n
        return [f"{self.head}{i:06d}" for i in range(start, start + n)]


def token_form(invoice: str | None, amount: int = 100) -> str:
    form = {
        "grant_type": "client_credentials",
        "scope": SCOPE,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "terminal": TERMINAL,
    }
    if invoice is not None:
        form |= {"invoiceID": invoice, "amount": str(amount), "currency": "KZT"}
    return urllib.parse.urlencode(form)


def cryptogram(key: rsa.RSAPublicKey, card: dict[str, str] | None = None) -> str:
    plain = json.dumps({**(card or CARD), "terminalId": TERMINAL}, separators=(",", ":"))
    return base64.b64encode(key.encrypt(plain.encode(), padding.PKCS1v15())).decode("ascii")


def pay_body(
    key: rsa.RSAPublicKey,
    invoice: str,
    *,
    card: dict[str, str] | None = None,
    amount: int = 100,
    post_link: str = "",
    account: str = "bench",
) -> str:
    """A cryptopay body as a shop sends it. A postLink only to the local receiver (f):
    nothing may leave this machine."""
    body: dict[str, Any] = {
        "amount": amount,
        "currency": "KZT",
        "name": "JON JONSON",
        "cryptogram": cryptogram(key, card),
        "invoiceId": invoice,
        "description": "bench payment",
        "accountId": account,
        "email": "jj@example.com",
        "phone": "77777777777",
        "cardSave": False,
    }
    if post_link:
        body["postLink"] = post_link
    return json.dumps(body, separators=(",", ":"))


def public_key(server: Server) -> rsa.RSAPublicKey:
    status, pem = get(server.url, "/public.rsa")
    assert status == 200
    key = serialization.load_pem_public_key(pem)
    assert isinstance(key, rsa.RSAPublicKey)
    return key


def mint_tokens(
    server: Server, invoices: list[str], threads: int = 8, amount: int = 100
) -> list[str]:
    """Invoice-bound tokens, issued over HTTP before the clock starts (keep-alive)."""
    netloc = urllib.parse.urlsplit(server.url).netloc
    headers = {"Content-Type": "application/x-www-form-urlencoded"}

    def chunk(part: list[str]) -> list[str]:
        conn = http.client.HTTPConnection(netloc, timeout=30)
        out = []
        try:
            for invoice in part:
                status, body = request(
                    server.url,
                    "POST",
                    "/oauth2/token",
                    token_form(invoice, amount).encode(),
                    headers,
                    conn,
                )
                if status != 200:
                    raise RuntimeError(f"token for {invoice}: {status} {body[:300]!r}")
                out.append(json.loads(body)["access_token"])
        finally:
            conn.close()
        return out

    size = math.ceil(len(invoices) / threads) or 1
    parts = [invoices[i : i + size] for i in range(0, len(invoices), size)]
    with ThreadPoolExecutor(threads) as pool:
        return [token for part in pool.map(chunk, parts) for token in part]


def parallel(
    server: Server,
    items: list[str],
    step: Callable[[http.client.HTTPConnection, str], str],
    threads: int = 8,
) -> list[str]:
    """``step(connection, item)`` for every item, from ``threads`` keep-alive connections;
    the results in the order of the items."""
    netloc = urllib.parse.urlsplit(server.url).netloc

    def chunk(part: list[str]) -> list[str]:
        conn = http.client.HTTPConnection(netloc, timeout=30)
        try:
            return [step(conn, item) for item in part]
        finally:
            conn.close()

    size = math.ceil(len(items) / threads) or 1
    parts = [items[i : i + size] for i in range(0, len(items), size)]
    with ThreadPoolExecutor(threads) as pool:
        return [out for part in pool.map(chunk, parts) for out in part]


def service_token(server: Server) -> str:
    status, body = request(
        server.url,
        "POST",
        "/oauth2/token",
        token_form(None).encode(),
        {"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert status == 200, body
    token: str = json.loads(body)["access_token"]
    return token


def replay_line(method: str, path: str, token: str = "", ctype: str = "", body: str = "") -> str:
    return "\t".join((method, path, token, ctype, body))


# --- wrk ------------------------------------------------------------------------------


@dataclass
class Load:
    """What one wrk run sends: the script, its lines, the substring of a good answer."""

    script: str
    lines: list[str]
    expect: str
    threads: int
    connections: int
    spare: str = "/public.rsa"
    #: successes per line (payments in b, requests otherwise)
    unit: str = "requests"
    #: paced.lua's target rate (requests/s over all threads)
    rate: float = 0.0
    #: substrings of an expected 4xx refusal (g), counted apart from errors
    refused: str = ""
    #: the invoices of the lines (f: to find their postLinks afterwards)
    invoices: list[str] = field(default_factory=list)
    post_link: str = ""


@dataclass
class Sample:
    cpu: list[float] = field(default_factory=list)
    peak_rss_mb: list[float] = field(default_factory=list)
    wrk_cpu: float = 0.0


def _py_spy(worker: psutil.Process, duration: float, prefix: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling one worker for the run (collapsed stacks, for flame graphs)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        sys.exit("--profile needs py-spy (pip install py-spy; not a dependency of tolem)")
    prefix.parent.mkdir(parents=True, exist_ok=True)
    out = f"{prefix}-pid{worker.pid}.txt"
    command = [spy, "record", "--pid", str(worker.pid), "--duration", str(round(duration))]
    command += ["--rate", "200", "--format", "raw", "--output", out, "--nonblocking", "--gil"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: S603


def _hwm_mb(process: psutil.Process) -> float:
    """The process's peak RSS (VmHWM) in MB; the current RSS where /proc lacks it."""
    with suppress(OSError):
        for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float(process.memory_info().rss) / 2**20


def run_wrk(
    wrk: str,
    server: Server,
    load: Load,
    duration: float,
    work_dir: Path,
    profile: Path | None = None,
) -> tuple[dict[str, Any], Sample]:
    data = work_dir / "requests.tsv"
    data.write_text("\n".join(load.lines) + "\n")
    out = work_dir / "wrk.json"
    out.unlink(missing_ok=True)
    env = {
        **os.environ,
        "BENCH_DATA": str(data),
        "BENCH_THREADS": str(load.threads),
        "BENCH_EXPECT": load.expect,
        "BENCH_OUT": str(out),
        "BENCH_LUA_DIR": str(LUA),
        "BENCH_SPARE": load.spare,
        "BENCH_RATE": str(load.rate),
        "BENCH_REFUSED": load.refused,
    }
    command = [wrk, "-t", str(load.threads), "-c", str(load.connections)]
    command += ["-d", f"{max(1, round(duration))}s", "--latency", "--timeout", "10s"]
    command += ["-s", str(LUA / load.script), server.url]
    workers = server.worker_processes()
    spies = [_py_spy(w, duration, profile) for w in workers] if profile else []
    before = [w.cpu_times() for w in workers]
    started = time.monotonic()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # noqa: S603
    wrk_process = psutil.Process(process.pid)
    wrk_cpu = 0.0
    while process.poll() is None:
        with suppress(psutil.Error):
            times = wrk_process.cpu_times()
            wrk_cpu = times.user + times.system
        time.sleep(0.1)
    stdout, stderr = process.communicate()
    wall = time.monotonic() - started
    for spy in spies:
        spy.wait(timeout=60)
    if process.returncode != 0 or not out.exists():
        raise RuntimeError(f"wrk failed ({process.returncode}): {stderr.decode()}{stdout.decode()}")
    after = [w.cpu_times() for w in workers]
    sample = Sample(
        cpu=[
            round(100 * ((a.user + a.system) - (b.user + b.system)) / wall, 1)
            for a, b in zip(after, before, strict=True)
        ],
        peak_rss_mb=[round(_hwm_mb(w), 1) for w in workers],
        wrk_cpu=round(100 * wrk_cpu / wall, 1),
    )
    result: dict[str, Any] = json.loads(out.read_text(errors="replace"))
    return result, sample


# --- scenarios --------------------------------------------------------------------------


@dataclass
class Target:
    """One running server and what the scenarios need to build requests for it."""

    wrk: str
    server: Server
    key: rsa.RSAPublicKey
    invoices: Invoices
    work_dir: Path
    connections: int
    threads: int
    database_url: str  # plain (sqlite:/// or postgresql://), read from outside
    seeded: int = 0  # payments made by seed_payments and for g
    receiver: Receiver | None = None  # f's postLink receiver
    rate: float = 300.0  # f's payments per second
    runs: int = 0  # wrk runs so far (f: each gets its own postLink path)


def scenario_load(target: Target, scenario: str, n: int) -> Load:
    """The pre-built requests of ``n`` units of a scenario."""
    t, c = target.threads, target.connections
    ctype_form = "application/x-www-form-urlencoded"
    if scenario == "a":
        lines = [
            replay_line("POST", "/oauth2/token", "", ctype_form, token_form(inv))
            for inv in target.invoices.take(n)
        ]
        return Load("replay.lua", lines, '"access_token"', t, c)
    if scenario == "b":
        invoices = target.invoices.take(n)
        lines = [token_form(inv) + "\t" + pay_body(target.key, inv) for inv in invoices]
        # One connection per thread keeps each token with its invoice (see flow.lua).
        return Load("flow.lua", lines, PAID, c, c, unit="payments")
    if scenario in ("c", "floor"):
        invoices = target.invoices.take(n)
        tokens = mint_tokens(target.server, invoices) if scenario == "c" else [""] * n
        lines = [
            replay_line(
                "POST", "/payment/cryptopay", tok, "application/json", pay_body(target.key, inv)
            )
            for inv, tok in zip(invoices, tokens, strict=True)
        ]
        if scenario == "floor":
            return Load("replay.lua", lines, '"AUTH"', t, c, spare="/")
        return Load("replay.lua", lines, PAID, t, c)
    if scenario == "d":
        invoices = target.invoices.take(n)
        tokens = mint_tokens(target.server, invoices)
        lines = [
            tok + "\t" + pay_body(target.key, inv, card=CARD_3DS)
            for inv, tok in zip(invoices, tokens, strict=True)
        ]
        # One connection per thread keeps each answer with its step (see secure3d.lua).
        return Load("secure3d.lua", lines, '"status":"AUTH"', c, c, unit="payments")
    if scenario == "f":
        assert target.receiver is not None
        target.runs += 1
        link = f"{target.receiver.url}/postlink/{target.runs}"
        invoices = target.invoices.take(n)
        tokens = mint_tokens(target.server, invoices)
        lines = [
            replay_line(
                "POST",
                "/payment/cryptopay",
                tok,
                "application/json",
                pay_body(target.key, inv, post_link=link),
            )
            for inv, tok in zip(invoices, tokens, strict=True)
        ]
        # Enough connections for rate x latency: the pace, not the connections, sets it.
        conns = max(c, 64)
        return Load(
            "paced.lua",
            lines,
            PAID,
            t,
            conns,
            rate=target.rate,
            invoices=invoices,
            post_link=link,
        )
    if scenario == "g":
        charged = charged_payments(target, math.ceil(n / REFUNDS_PER_PAYMENT))
        token = service_token(target.server)
        path = "/operation/{}/refund?amount=" + str(REFUND_PART)
        # Consecutive lines go out at once on a thread's connections, and each thread
        # takes every t-th line: each payment's refunds race each other.
        lines = [
            replay_line("POST", path.format(tx_id), token)
            for tx_id in charged
            for _ in range(REFUNDS_PER_PAYMENT)
        ]
        return Load("replay.lua", lines, '"code":0', t, c, refused=REFUSED)
    if scenario == "e":
        checked = paid_invoices(target.database_url, 1000)
        if not checked:
            seed_payments(target, 100)
            checked = paid_invoices(target.database_url, 1000)
        token = service_token(target.server)
        paths = [f"/check-status/payment/transaction/{invoice}" for invoice in checked]
        lines = [replay_line("GET", paths[i % len(paths)], token) for i in range(n)]
        return Load("replay.lua", lines, '"resultCode":"100"', t, c)
    raise ValueError(f"unknown scenario {scenario}")


def charged_payments(target: Target, n: int) -> list[str]:
    """``n`` payments of REFUND_BASE KZT, charged (two requests each, then a charge)."""
    invoices = target.invoices.take(n)
    minted = mint_tokens(target.server, invoices, amount=REFUND_BASE)
    tokens = dict(zip(invoices, minted, strict=True))
    charger = service_token(target.server)
    json_type = {"Content-Type": "application/json"}

    def pay_and_charge(conn: http.client.HTTPConnection, invoice: str) -> str:
        body = pay_body(target.key, invoice, amount=REFUND_BASE, account=REFUND_ACCOUNT)
        auth = {"Authorization": f"Bearer {tokens[invoice]}"}
        status, answer = request(
            target.server.url, "POST", "/payment/cryptopay", body.encode(), json_type | auth, conn
        )
        if status != 200 or PAID.encode() not in answer:
            raise RuntimeError(f"payment for g {invoice}: {status} {answer[:300]!r}")
        tx_id: str = json.loads(answer)["id"]
        status, answer = request(
            target.server.url,
            "POST",
            f"/operation/{tx_id}/charge",
            b"",
            {"Authorization": f"Bearer {charger}"},
            conn,
        )
        if status != 200 or b'"status":"CHARGE"' not in answer:
            raise RuntimeError(f"charge for g {invoice}: {status} {answer[:300]!r}")
        return tx_id

    charged = parallel(target.server, invoices, pay_and_charge)
    target.seeded += len(charged)
    return charged


def seed_payments(target: Target, n: int) -> None:
    """Payments made before scenario e when no other scenario made any."""
    invoices = target.invoices.take(n)
    tokens = mint_tokens(target.server, invoices)
    for inv, tok in zip(invoices, tokens, strict=True):
        status, body = request(
            target.server.url,
            "POST",
            "/payment/cryptopay",
            pay_body(target.key, inv).encode(),
            {"Content-Type": "application/json", "Authorization": f"Bearer {tok}"},
        )
        if status != 200 or PAID.encode() not in body:
            raise RuntimeError(f"seed payment {inv}: {status} {body[:300]!r}")
        target.seeded += 1


def measure(
    target: Target,
    scenario: str,
    duration: float,
    warmup: float,
    workers: int,
    profile: Path | None = None,
) -> dict[str, Any]:
    """Warm up (which also measures the rate), then the timed run with enough requests."""
    guess = target.rate if scenario == "f" else GUESS[scenario] * workers
    warm_runs: list[dict[str, Any]] = []
    for _ in range(3):
        warm, _ = run_wrk(
            target.wrk,
            target.server,
            scenario_load(target, scenario, max(50, int(guess * warmup))),
            warmup,
            target.work_dir,
        )
        warm_runs.append(warm)
        # A warm-up that ran out of requests measured the guess, not the rate: again,
        # with four times as many.
        if scenario == "f" or not warm["exhausted_threads"]:
            break
        guess *= 4
    rate = max(warm["ok"] + warm["refused"], 1) / max(warm["duration_s"], 0.1)
    if scenario == "f":  # paced: the target rate, and a little more in case it is met
        needed = int(target.rate * duration * 1.1) + 20
    else:
        # Tokens (c, d, f) and charged payments (g) cost time to make; the other
        # scenarios' requests are cheap to build.
        margin = 1.5 if scenario in ("c", "d", "g") else 2.5
        needed = int(rate * duration * margin) + 20 * target.connections
    load = scenario_load(target, scenario, needed)
    if profile:
        kind = "sqlite" if target.database_url.startswith("sqlite") else "postgresql"
        profile = profile / f"{kind}-{workers}w-{scenario}"
    # Only f's receiver is measured; it is stopped by the time the floor runs.
    watched = target.receiver if scenario == "f" else None
    receiver = psutil.Process(watched.process.pid) if watched else None
    receiver_before = receiver.cpu_times() if receiver else None
    result, sample = run_wrk(target.wrk, target.server, load, duration, target.work_dir, profile)
    seconds = result["duration_s"]
    socket_errors = sum(result["socket_errors"].values())
    row: dict[str, Any] = {
        "scenario": SCENARIO_NAMES[scenario],
        "unit": load.unit,
        "rate": round(result["ok"] / seconds, 1),
        "requests": result["requests"],
        "ok": result["ok"],
        "errors": result["bad"] + socket_errors,
        "http_errors": result["http_error"],
        "socket_errors": result["socket_errors"],
        "first_error": result["first_bad"],
        "p50_ms": result["p50_ms"],
        "p95_ms": result["p95_ms"],
        "p99_ms": result["p99_ms"],
        "max_ms": result["max_ms"],
        "seconds": round(seconds, 2),
        "exhausted": result["exhausted_threads"] > 0,
        "wrk_threads": load.threads,
        "wrk_connections": load.connections,
        "cpu_percent": sample.cpu,
        "peak_rss_mb": sample.peak_rss_mb,
        "wrk_cpu_percent": sample.wrk_cpu,
        # Every warm-up's payments are in the database: all are counted.
        "warmup_ok": sum(w["ok"] for w in warm_runs),
        "warmup_errors": sum(w["bad"] + sum(w["socket_errors"].values()) for w in warm_runs),
        "wrk_runs": len(warm_runs) + 1,
    }
    if scenario == "d":  # latency of the whole flow; the requests' own beside it
        row |= {f"request_{k}": row[k] for k in ("p50_ms", "p95_ms", "p99_ms", "max_ms")}
        row |= {k: result[f"flow_{k}"] for k in ("p50_ms", "p95_ms", "p99_ms", "max_ms")}
    if scenario == "g":
        row["refused"] = result["refused"]
        row["warmup_refused"] = sum(w["refused"] for w in warm_runs)
    if scenario == "f":
        row["target_rate"] = target.rate
        assert receiver is not None and receiver_before is not None
        row |= postlink_lags(target, load)
        row["errors"] += row["postlinks_lost"]
        after = receiver.cpu_times()
        row["receiver_cpu_percent"] = round(
            100
            * (after.user + after.system - receiver_before.user - receiver_before.system)
            / seconds,
            1,
        )
    return row


def _unix(value: Any) -> float:
    """A timestamp read from outside: SQLite's naive UTC text or PostgreSQL's datetime."""
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def postlink_lags(target: Target, load: Load, patience: float = 30.0) -> dict[str, Any]:
    """Lag of every postLink of the run: arrival at the receiver - the notification's
    created_at (written in the payment's own transaction, just before its commit).
    Waits up to ``patience`` seconds after the run for deliveries still under way."""
    assert target.receiver is not None
    query = (
        "SELECT t.invoice_id, n.created_at FROM notifications n "  # noqa: S608 - ours
        f"JOIN transactions t ON t.id = n.transaction_id WHERE n.url = '{load.post_link}'"
    )
    paid_query = (
        "SELECT count(*) FROM transactions "  # noqa: S608 - ours
        f"WHERE post_link = '{load.post_link}' AND status IN ('AUTH', 'CHARGE')"
    )
    deadline = time.monotonic() + patience
    time.sleep(0.5)  # payments in flight when wrk stopped commit meanwhile
    while True:
        written = {str(inv): _unix(at) for inv, at in select(target.database_url, query)}
        arrived = target.receiver.arrivals()
        missing = [inv for inv in written if inv not in arrived]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    paid = int(select(target.database_url, paid_query)[0][0])
    lags = sorted(1000 * (arrived[inv] - at) for inv, at in written.items() if inv in arrived)

    def pct(p: int) -> float:
        return round(lags[max(0, math.ceil(len(lags) * p / 100) - 1)], 1) if lags else 0.0

    return {
        "postlinks": len(written),
        "postlinks_delivered": len(lags),
        # never arrived, or never written for a paid payment
        "postlinks_lost": len(missing) + max(0, paid - len(written)),
        "lag_p50_ms": pct(50),
        "lag_p95_ms": pct(95),
        "lag_p99_ms": pct(99),
        "lag_max_ms": round(lags[-1], 1) if lags else 0.0,
    }


def select(database_url: str, query: str) -> list[tuple[Any, ...]]:
    """Rows of one query against a gateway's database, read from outside it."""
    if database_url.startswith("sqlite:///"):
        conn = sqlite3.connect(database_url.removeprefix("sqlite:///"))
        try:
            return list(conn.execute(query))
        finally:
            conn.close()
    import psycopg

    with psycopg.connect(database_url) as pg:
        return list(pg.execute(query.encode()).fetchall())


def count_by_status(database_url: str) -> dict[str, int]:
    """The scenarios' transactions by status (not the --stored-rows ones)."""
    rows = select(
        database_url,
        "SELECT status, count(*) FROM transactions "  # noqa: S608 - constants
        f"WHERE invoice_id NOT LIKE '{STORED_PREFIX}%' GROUP BY status",
    )
    return {str(status): int(n) for status, n in rows}


def paid_invoices(database_url: str, limit: int) -> list[str]:
    approved = ", ".join(f"'{s}'" for s in APPROVED)
    query = (
        f"SELECT invoice_id FROM transactions WHERE status IN ({approved}) "  # noqa: S608 - constants
        f"AND invoice_id NOT LIKE '{STORED_PREFIX}%' LIMIT {limit}"
    )
    return [str(invoice) for (invoice,) in select(database_url, query)]


def load_stored_rows(database_url: str, count: int) -> float:
    """``count`` transactions of the test merchant over 90 days (bench/cabinet_search.py's
    mix of statuses, amounts and cards; invoices starting with 0), then ANALYZE; the
    seconds it took. PostgreSQL: COPY; SQLite: executemany in one transaction, then a
    checkpoint that empties the WAL."""
    import random

    import sqlalchemy as sa
    from cabinet_search import _rows

    from tolem.payments.models import Transaction

    began = time.perf_counter()
    ((merchant,),) = select(
        database_url,
        f"SELECT merchant_id FROM terminals WHERE id = '{TERMINAL}'",  # noqa: S608 - constant
    )
    lines = _rows(random.Random(9), str(merchant), TERMINAL, count, STORED_PREFIX)
    columns = list(Transaction.__table__.columns)
    names = ", ".join(c.name for c in columns)
    batch = 20_000
    if database_url.startswith("postgresql"):
        import psycopg

        with psycopg.connect(database_url) as pg, pg.cursor() as cursor:
            with cursor.copy(f"COPY transactions ({names}) FROM STDIN") as copy:
                chunk: list[str] = []
                for line in lines:
                    chunk.append(line)
                    if len(chunk) == batch:
                        copy.write("".join(chunk))
                        chunk = []
                copy.write("".join(chunk))
            pg.commit()
            cursor.execute("ANALYZE")
            pg.commit()
        return round(time.perf_counter() - began, 1)

    def value(column: sa.ColumnElement[Any], text: str) -> Any:
        """A COPY text field as SQLite stores it through tolem's column types."""
        if text == "\\N":
            return None
        kind = column.type
        if isinstance(kind, sa.Boolean):
            return int(text == "t")
        if isinstance(kind, sa.types.TypeDecorator) and isinstance(kind.impl, sa.DateTime):
            return datetime.fromisoformat(text).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
        if isinstance(kind, sa.Integer | sa.types.TypeDecorator) and text.lstrip("-").isdigit():
            return int(text)
        return text

    db = sqlite3.connect(database_url.removeprefix("sqlite:///"), timeout=60)
    try:
        marks = ", ".join("?" * len(columns))
        insert = f"INSERT INTO transactions ({names}) VALUES ({marks})"  # noqa: S608 - ours
        db.execute("BEGIN IMMEDIATE")
        rows: list[list[Any]] = []
        for line in lines:
            fields = line.rstrip("\n").split("\t")
            rows.append([value(c, f) for c, f in zip(columns, fields, strict=True)])
            if len(rows) == batch:
                db.executemany(insert, rows)
                rows = []
        db.executemany(insert, rows)
        db.commit()
        db.execute("ANALYZE")
        db.commit()
        # Into the database file before the clock starts: left in the WAL, the load (a
        # gigabyte) would be copied by the gateway's checkpointer during the first
        # scenarios, and every read would search a WAL of 250,000 pages meanwhile.
        db.execute("PRAGMA busy_timeout=60000")
        busy, _pages, _copied = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:
            console.print("[yellow]the stored rows are still partly in the WAL[/yellow]")
    finally:
        db.close()
    return round(time.perf_counter() - began, 1)


# --- one configuration ------------------------------------------------------------------


def run_configuration(
    wrk: str, database: str, workers: int, args: argparse.Namespace
) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="tolem-bench-") as tmp, _database(database) as urls:
        data_dir = Path(tmp)
        tolem_url, plain_url = urls or (
            f"sqlite:///{data_dir / 'tolem.db'}",
            f"sqlite:///{data_dir / 'tolem.db'}",
        )
        rows: list[dict[str, Any]] = []
        threads = min(args.threads, args.connections)
        common: dict[str, Any] = {
            "database": database,
            "workers": workers,
            "connections": args.connections,
            "stored_rows": 0,
        }
        with (
            tolem_server(data_dir, tolem_url if urls else "", workers) as server,
            postlink_receiver() if "f" in args.scenarios else nullcontext() as receiver,
        ):
            if args.stored_rows:
                console.print(f"  {database}: loading {args.stored_rows:,} stored transactions")
                common["stored_rows"] = args.stored_rows
                common["stored_load_s"] = load_stored_rows(plain_url, args.stored_rows)
            target = Target(
                wrk,
                server,
                public_key(server),
                Invoices(),
                data_dir,
                args.connections,
                threads,
                plain_url,
                receiver=receiver,
                rate=args.rate,
            )
            for scenario in args.scenarios:
                console.print(f"  {database}, {workers} worker(s): {SCENARIO_NAMES[scenario]}")
                row = measure(target, scenario, args.duration, args.warmup, workers, args.profile)
                rows.append(common | row)
        # After the server stopped: its graceful shutdown finished the payments in flight.
        check = _check_database(plain_url, target, rows)
        if args.floor:
            console.print(f"  {database}, {workers} worker(s): floor")
            floor_db = plain_url if urls else f"sqlite:///{data_dir / 'floor.db'}"
            with floor_server(data_dir, floor_db, workers) as floor:
                target.server = floor
                rows.append(common | measure(target, "floor", args.duration, args.warmup, workers))
            floor_rate = rows[-1]["rate"]
            for row in rows:
                if row["scenario"] == SCENARIO_NAMES["c"] and floor_rate:
                    row["floor_ratio"] = round(row["rate"] / floor_rate, 3)
        for row in rows:
            row["database_check"] = check
        return rows


def _check_database(url: str, target: Target, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Every payment the scenarios made is in the database once, approved; no payment of
    g is refunded beyond its charge, and its refunds add up to the approved ones."""
    by_status = count_by_status(url)
    approved = sum(by_status.get(s, 0) for s in APPROVED)
    paying_names = [SCENARIO_NAMES[s] for s in "bcdf"]
    paying = [r for r in rows if r["scenario"] in paying_names]
    answered = sum(r["ok"] + r["warmup_ok"] for r in paying) + target.seeded
    # A payment in flight when wrk stops is committed but its answer is not counted:
    # at most one per connection per wrk run (warm-ups and measured run of each).
    in_flight = sum(r["wrk_runs"] * r["wrk_connections"] for r in paying)
    # d: a payment whose challenge was under way when wrk stopped stays NEW.
    three_ds = [r for r in rows if r["scenario"] == SCENARIO_NAMES["d"]]
    waiting = sum(r["wrk_runs"] * r["wrk_connections"] for r in three_ds)
    refunds = [r for r in rows if r["scenario"] == SCENARIO_NAMES["g"]]
    allowed = set(APPROVED) | ({"REFUND"} if refunds else set()) | ({"NEW"} if waiting else set())
    problems = []
    if set(by_status) - allowed:
        problems.append(f"transactions not approved: {by_status}")
    if by_status.get("NEW", 0) > waiting:
        problems.append(f"{by_status['NEW']} payments left NEW, more than were in flight")
    paid = approved + by_status.get("REFUND", 0)
    if not answered <= paid <= answered + in_flight:
        problems.append(f"{paid} approved in the database, {answered} answered as paid")
    result: dict[str, Any] = {"by_status": by_status, "answered_paid": answered}
    if refunds:
        check = _check_refunds(url, refunds)
        problems += check.pop("problems")
        result["refunds"] = check
    result["problems"] = problems
    return result


def _check_refunds(url: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """g, afterwards: per payment, refunded <= charged, nothing left reserved or pending,
    and the refunded amount is the sum of its approved refunds; as many approved refunds
    as were answered so (plus at most one in flight per connection per run)."""
    query = f"""
        SELECT t.id, t.amount_charged, t.amount_refunded, t.amount_refund_pending,
               COALESCE(SUM(CASE WHEN o.state = 'done' THEN o.amount END), 0),
               SUM(CASE WHEN o.state = 'done' THEN 1 ELSE 0 END),
               SUM(CASE WHEN o.state NOT IN ('done', 'declined') THEN 1 ELSE 0 END)
        FROM transactions t
        LEFT JOIN operations o ON o.transaction_id = t.id AND o.kind = 'refund'
        WHERE t.account_id = '{REFUND_ACCOUNT}'
        GROUP BY t.id, t.amount_charged, t.amount_refunded, t.amount_refund_pending
    """  # noqa: S608 - constants
    payments = select(url, query)
    over = mismatched = reserved = 0
    done_total = 0
    refunded_total = 0
    for _id, charged, refunded, pending, done_sum, done, unfinished in payments:
        over += int(refunded) > int(charged)
        mismatched += int(refunded) != int(done_sum)
        reserved += int(pending) != 0 or int(unfinished or 0) != 0
        done_total += int(done or 0)
        refunded_total += int(refunded)
    answered = sum(r["ok"] + r["warmup_ok"] for r in rows)
    in_flight = sum(r["wrk_runs"] * r["wrk_connections"] for r in rows)
    problems = []
    if over:
        problems.append(f"{over} payments refunded more than was charged")
    if mismatched:
        problems.append(f"{mismatched} payments whose refunded amount != their refunds' sum")
    if reserved:
        problems.append(f"{reserved} payments with a refund still reserved or unfinished")
    if not answered <= done_total <= answered + in_flight:
        problems.append(f"{done_total} refunds done in the database, {answered} answered so")
    return {
        "payments": len(payments),
        "refunds_done": done_total,
        "refunds_answered": answered,
        "refunded_kzt": refunded_total / 100,
        "over_refunded": over,
        "problems": problems,
    }


@contextmanager
def _database(kind: str) -> Iterator[tuple[str, str] | None]:
    """(tolem's URL, plain psycopg URL) of a fresh PostgreSQL database; None for SQLite."""
    if kind == "sqlite":
        yield None
        return
    with fresh_postgres() as url:
        yield url.replace("postgresql://", "postgresql+psycopg://", 1), url


# --- output ---------------------------------------------------------------------------


def print_table(rows: list[dict[str, Any]]) -> None:
    table = Table(
        title="tolem benchmark (rate: successful requests/s; b, d, f: payments/s; "
        "d: latency of the whole flow)"
    )
    for name in ("scenario", "db", "workers", "rows", "rate", "p50 ms", "p95 ms", "p99 ms"):
        table.add_column(name, justify="left" if name in ("scenario", "db") else "right")
    for name in ("errors", "CPU % per worker", "peak RSS MB", "wrk CPU %", "vs floor"):
        table.add_column(name, justify="right")
    for row in rows:
        errors = row["errors"] + len(row["database_check"]["problems"])
        table.add_row(
            row["scenario"] + (" (exhausted)" if row["exhausted"] else ""),
            row["database"],
            str(row["workers"]),
            f"{row['stored_rows']:,}",
            f"{row['rate']:.0f}" + (f" / {row['target_rate']:.0f}" if "target_rate" in row else ""),
            f"{row['p50_ms']:.1f}",
            f"{row['p95_ms']:.1f}",
            f"{row['p99_ms']:.1f}",
            f"[red]{errors}[/red]" if errors else "0",
            " ".join(f"{c:.0f}" for c in row["cpu_percent"]),
            " ".join(f"{m:.0f}" for m in row["peak_rss_mb"]),
            f"{row['wrk_cpu_percent']:.0f}",
            f"{row['floor_ratio']:.0%}" if "floor_ratio" in row else "",
        )
    console.print(table)
    for row in rows:
        where = f"{row['database']}, {row['workers']} worker(s)"
        if "lag_p50_ms" in row:
            console.print(
                f"f postLink lag, {where}: p50 {row['lag_p50_ms']:.0f} ms, "
                f"p95 {row['lag_p95_ms']:.0f} ms, p99 {row['lag_p99_ms']:.0f} ms, "
                f"max {row['lag_max_ms']:.0f} ms; {row['postlinks_delivered']} of "
                f"{row['postlinks']} delivered, lost {row['postlinks_lost']}; achieved "
                f"{row['rate']:.0f} of {row['target_rate']:.0f} payments/s; receiver CPU "
                f"{row['receiver_cpu_percent']:.0f} %"
            )
        if "refused" in row:
            refunds = row["database_check"].get("refunds", {})
            console.print(
                f"g racing refunds, {where}: {row['ok']} approved, {row['refused']} refused "
                f"(would exceed; expected); database: {refunds.get('refunds_done')} done on "
                f"{refunds.get('payments')} payments, over-refunded "
                f"{refunds.get('over_refunded')}"
            )
        if "stored_load_s" in row and row["scenario"] == rows[0]["scenario"]:
            console.print(
                f"stored rows, {where}: {row['stored_rows']:,} loaded in "
                f"{row['stored_load_s']:.1f} s"
            )
    for row in rows:
        if row["errors"]:
            console.print(f"[red]{row['scenario']} {row['database']}:[/red] {row['first_error']}")
    seen = set()
    for row in rows:
        for problem in row["database_check"]["problems"]:
            if problem not in seen:
                seen.add(problem)
                console.print(f"[red]database check, {row['database']}:[/red] {problem}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--workers", type=int, nargs="+", help="worker counts (default 1 2)")
    parser.add_argument("--duration", type=float, help="seconds per scenario (default 10)")
    parser.add_argument("--warmup", type=float, help="warm-up seconds per scenario (default 3)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (not for b)")
    parser.add_argument("--database", choices=["sqlite", "postgresql", "both"])
    parser.add_argument("--scenarios", help="comma-separated of a,b,c,d,e,f,g (default all)")
    parser.add_argument(
        "--rate", type=float, default=300.0, help="f: payments per second (default 300)"
    )
    parser.add_argument(
        "--stored-rows",
        type=int,
        default=0,
        metavar="N",
        help="bulk-load N transactions of the test merchant before the scenarios",
    )
    parser.add_argument("--no-floor", dest="floor", action="store_false", help="skip the floor")
    parser.add_argument(
        "--json",
        type=Path,
        default=Path("test-artifacts/bench-results.json"),
        help="where to write the results (default test-artifacts/bench-results.json)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="py-spy every tolem worker during each measured run (collapsed stacks in DIR)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="1 s, SQLite, 1 worker, scenarios a,c: a smoke run"
    )
    args = parser.parse_args(argv)
    quick = args.quick
    args.workers = args.workers or ([1] if quick else [1, 2])
    args.duration = args.duration or (1.0 if quick else 10.0)
    args.warmup = args.warmup or (1.0 if quick else 3.0)
    args.database = args.database or ("sqlite" if quick else "both")
    scenarios = (args.scenarios or ("a,c" if quick else ",".join(ALL_SCENARIOS))).split(",")
    unknown = [s for s in scenarios if s not in ALL_SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {','.join(unknown)}: choose from a,b,c,d,e,f,g")
    args.scenarios = scenarios
    if args.connections < 1 or min(args.workers) < 1 or args.duration <= 0 or args.rate <= 0:
        parser.error("connections, workers, duration and rate must be positive")
    if args.stored_rows < 0:
        parser.error("--stored-rows must be 0 or more")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wrk = ensure_wrk()
    databases = ["sqlite", "postgresql"] if args.database == "both" else [args.database]
    if "postgresql" in databases and not postgres_reachable():
        if args.database == "postgresql":
            sys.exit(f"PostgreSQL is not reachable at {PG_ADMIN}")
        console.print(f"PostgreSQL not reachable at {PG_ADMIN}: SQLite only", style="yellow")
        databases.remove("postgresql")
    info = machine()
    console.print(
        f"{info['cpus']} CPUs ({info['cpu_model']}), {info['ram_gb']} GB, "
        f"load {info['load_avg_at_start']}"
    )
    rows: list[dict[str, Any]] = []
    for database in databases:
        for workers in args.workers:
            rows += run_configuration(wrk, database, workers, args)
    print_table(rows)
    report = {
        "machine": info,
        "load_avg_at_end": [round(x, 2) for x in os.getloadavg()],
        "settings": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "connections": args.connections,
            "wrk_threads": args.threads,
            "postlink_rate": args.rate,
            "stored_rows": args.stored_rows,
            "rsa_key_bits": 2048,
            "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
        },
        "results": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"results written to {args.json}")
    failed = any(r["errors"] or r["database_check"]["problems"] for r in rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
