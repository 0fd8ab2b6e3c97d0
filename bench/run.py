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
    e  GET /check-status/payment/transaction/{invoice} of paid invoices
    floor  bench/floor.py under uvicorn, same worker count: RSA decryption of the same
       kind of cryptogram plus one durable INSERT; tolem's c is reported as a share of it

Every answer is checked (status 2xx and the body of a success); afterwards the
transactions in the database are counted by status, and every payment must be there
once, approved. Errors must be 0: any error is shown in red and makes the exit code 1.

The warm-up of each scenario also measures its rate, so that the measured run gets
enough pre-built requests (2.5 times what the warm-up rate needs; 1.5 for c, whose
tokens take time to issue); a thread that runs out stops early and the result says
``exhausted``. Results go to test-artifacts/bench-results.json unless ``--json`` says
otherwise; ``--profile DIR`` samples every worker with py-spy (if installed) during each
measured run.

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
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
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

#: First guesses of each scenario's rate per worker (requests/s), only to size warm-ups.
GUESS = {"a": 1000, "b": 300, "c": 400, "e": 1000, "floor": 2500}
SCENARIO_NAMES = {
    "a": "a token",
    "b": "b token+cryptopay",
    "c": "c cryptopay",
    "e": "e check-status",
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


def token_form(invoice: str | None) -> str:
    form = {
        "grant_type": "client_credentials",
        "scope": SCOPE,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "terminal": TERMINAL,
    }
    if invoice is not None:
        form |= {"invoiceID": invoice, "amount": "100", "currency": "KZT"}
    return urllib.parse.urlencode(form)


def cryptogram(key: rsa.RSAPublicKey) -> str:
    plain = json.dumps({**CARD, "terminalId": TERMINAL}, separators=(",", ":")).encode()
    return base64.b64encode(key.encrypt(plain, padding.PKCS1v15())).decode("ascii")


def pay_body(key: rsa.RSAPublicKey, invoice: str) -> str:
    """A cryptopay body as a shop sends it (no postLink: nothing may leave this machine)."""
    return json.dumps(
        {
            "amount": 100,
            "currency": "KZT",
            "name": "JON JONSON",
            "cryptogram": cryptogram(key),
            "invoiceId": invoice,
            "description": "bench payment",
            "accountId": "bench",
            "email": "jj@example.com",
            "phone": "77777777777",
            "cardSave": False,
        },
        separators=(",", ":"),
    )


def public_key(server: Server) -> rsa.RSAPublicKey:
    status, pem = get(server.url, "/public.rsa")
    assert status == 200
    key = serialization.load_pem_public_key(pem)
    assert isinstance(key, rsa.RSAPublicKey)
    return key


def mint_tokens(server: Server, invoices: list[str], threads: int = 8) -> list[str]:
    """Invoice-bound tokens, issued over HTTP before the clock starts (keep-alive)."""
    netloc = urllib.parse.urlsplit(server.url).netloc
    headers = {"Content-Type": "application/x-www-form-urlencoded"}

    def chunk(part: list[str]) -> list[str]:
        conn = http.client.HTTPConnection(netloc, timeout=30)
        out = []
        try:
            for invoice in part:
                status, body = request(
                    server.url, "POST", "/oauth2/token", token_form(invoice).encode(), headers, conn
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
    seeded: int = 0  # payments made by seed_payments


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
    guess = GUESS[scenario] * workers
    warm, _ = run_wrk(
        target.wrk,
        target.server,
        scenario_load(target, scenario, max(50, int(guess * warmup))),
        warmup,
        target.work_dir,
    )
    rate = max(warm["ok"], 1) / max(warm["duration_s"], 0.1)
    # Tokens of c cost time to issue; the other scenarios' requests are cheap to build.
    margin = 1.5 if scenario == "c" else 2.5
    needed = int(rate * duration * margin) + 20 * target.connections
    load = scenario_load(target, scenario, needed)
    if profile:
        kind = "sqlite" if target.database_url.startswith("sqlite") else "postgresql"
        profile = profile / f"{kind}-{workers}w-{scenario}"
    result, sample = run_wrk(target.wrk, target.server, load, duration, target.work_dir, profile)
    seconds = result["duration_s"]
    socket_errors = sum(result["socket_errors"].values())
    return {
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
        "cpu_percent": sample.cpu,
        "peak_rss_mb": sample.peak_rss_mb,
        "wrk_cpu_percent": sample.wrk_cpu,
        "warmup_ok": warm["ok"],
        "warmup_errors": warm["bad"] + sum(warm["socket_errors"].values()),
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
    rows = select(database_url, "SELECT status, count(*) FROM transactions GROUP BY status")
    return {str(status): int(n) for status, n in rows}


def paid_invoices(database_url: str, limit: int) -> list[str]:
    approved = ", ".join(f"'{s}'" for s in APPROVED)
    query = f"SELECT invoice_id FROM transactions WHERE status IN ({approved}) LIMIT {limit}"  # noqa: S608 - constants
    return [str(invoice) for (invoice,) in select(database_url, query)]


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
        common = {"database": database, "workers": workers, "connections": args.connections}
        with tolem_server(data_dir, tolem_url if urls else "", workers) as server:
            target = Target(
                wrk,
                server,
                public_key(server),
                Invoices(),
                data_dir,
                args.connections,
                threads,
                plain_url,
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
    """Every payment the scenarios made is in the database once, approved."""
    by_status = count_by_status(url)
    approved = sum(by_status.get(s, 0) for s in APPROVED)
    paying = [r for r in rows if r["scenario"] in (SCENARIO_NAMES["b"], SCENARIO_NAMES["c"])]
    answered = sum(r["ok"] + r["warmup_ok"] for r in paying) + target.seeded
    # A payment in flight when wrk stops is committed but its answer is not counted:
    # at most one per connection per wrk run (warm-up and measured run of each).
    in_flight = target.connections * 2 * len(paying)
    problems = []
    if set(by_status) - set(APPROVED):
        problems.append(f"transactions not approved: {by_status}")
    if not answered <= approved <= answered + in_flight:
        problems.append(f"{approved} approved in the database, {answered} answered as paid")
    return {"by_status": by_status, "answered_paid": answered, "problems": problems}


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
    table = Table(title="tolem benchmark (rate: successful requests/s; b: payments/s)")
    for name in ("scenario", "db", "workers", "conns", "rate", "p50 ms", "p95 ms", "p99 ms"):
        table.add_column(name, justify="left" if name in ("scenario", "db") else "right")
    for name in ("errors", "CPU % per worker", "peak RSS MB", "wrk CPU %", "vs floor"):
        table.add_column(name, justify="right")
    for row in rows:
        errors = row["errors"] + len(row["database_check"]["problems"])
        table.add_row(
            row["scenario"] + (" (exhausted)" if row["exhausted"] else ""),
            row["database"],
            str(row["workers"]),
            str(row["connections"]),
            f"{row['rate']:.0f}",
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
    parser.add_argument("--scenarios", help="comma-separated of a,b,c,e (default all)")
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
    scenarios = (args.scenarios or ("a,c" if quick else "a,b,c,e")).split(",")
    unknown = [s for s in scenarios if s not in ("a", "b", "c", "e")]
    if unknown:
        parser.error(f"unknown scenario(s) {','.join(unknown)}: choose from a,b,c,e")
    args.scenarios = scenarios
    if args.connections < 1 or min(args.workers) < 1 or args.duration <= 0:
        parser.error("connections, workers and duration must be positive")
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
