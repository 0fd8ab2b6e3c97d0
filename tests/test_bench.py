"""The benchmark runs: a tiny ``bench/run.py --quick`` completes and reports sane numbers.

Not a timed test: it checks that every scenario answered, without errors, and that the
report has what BENCHMARKS.md reads from it; never how fast. The scenarios' own checks
(the database check of racing refunds) are shown to fail on a database that breaks them.
"""

from __future__ import annotations

import importlib.util
import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

KEYS = {
    "scenario",
    "database",
    "workers",
    "connections",
    "rate",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "errors",
    "cpu_percent",
    "peak_rss_mb",
    "database_check",
}


@pytest.mark.slow
def test_quick_benchmark_completes_without_errors(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    run = subprocess.run(
        [sys.executable, "bench/run.py", "--quick", "--scenarios", "a,c", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(out.read_text())
    assert report["machine"]["cpus"] >= 1
    rows = {row["scenario"]: row for row in report["results"]}
    assert set(rows) == {"a token", "c cryptopay", "floor"}
    for row in rows.values():
        assert set(row) >= KEYS, row
        assert row["database"] == "sqlite"
        assert row["workers"] == 1
        assert row["rate"] > 0, row
        assert row["ok"] > 0, row
        assert row["errors"] == 0, row
        assert row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"], row
        assert len(row["cpu_percent"]) == len(row["peak_rss_mb"]) == 1
        assert 0 < row["peak_rss_mb"][0] < 4096, row
    # every payment the run was told of is in the database, approved, exactly once
    check = rows["c cryptopay"]["database_check"]
    assert check["problems"] == [], check
    assert set(check["by_status"]) == {"AUTH"}, check
    assert check["by_status"]["AUTH"] >= check["answered_paid"] > 0, check
    assert 0 < rows["c cryptopay"]["floor_ratio"] < 10


@pytest.mark.slow
def test_tiny_3ds_postlink_and_refund_scenarios_are_checked(tmp_path: Path) -> None:
    """d, f and g, 1 s each: completed 3-D Secure payments, every postLink delivered with
    its lag, racing refunds never beyond the charge, and all of it checked in the database."""
    out = tmp_path / "bench.json"
    command = [sys.executable, "bench/run.py", "--quick", "--scenarios", "d,f,g", "--no-floor"]
    run = subprocess.run(
        [*command, "--rate", "40", "--stored-rows", "500", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    rows = {row["scenario"]: row for row in json.loads(out.read_text())["results"]}
    assert set(rows) == {"d 3-D Secure", "f postLink lag", "g racing refunds"}
    for row in rows.values():
        assert set(row) >= KEYS, row
        assert row["errors"] == 0 and row["ok"] > 0, row
        assert row["stored_rows"] == 500 and row["stored_load_s"] >= 0, row
        assert row["database_check"]["problems"] == [], row["database_check"]
    # d: the rate is of completed payments, the latency that of the whole flow
    d = rows["d 3-D Secure"]
    assert d["unit"] == "payments"
    assert 0 < d["request_p50_ms"] <= d["p50_ms"] <= d["p99_ms"], d
    # f: every postLink of the run arrived; lags are numbers, achieved rate beside target
    f = rows["f postLink lag"]
    assert f["postlinks_lost"] == 0 and f["postlinks"] == f["postlinks_delivered"] > 0, f
    assert 0 < f["lag_p50_ms"] <= f["lag_p95_ms"] <= f["lag_p99_ms"] <= f["lag_max_ms"], f
    assert f["target_rate"] == 40 and 0 < f["rate"] <= 60, f
    # g: refunds were refused for exceeding the charge, and none was refunded beyond it
    g = rows["g racing refunds"]
    refunds = g["database_check"]["refunds"]
    assert g["refused"] + g["warmup_refused"] > 0, g
    assert refunds["over_refunded"] == 0 and refunds["payments"] > 0, refunds
    assert refunds["refunds_done"] >= refunds["refunds_answered"] > 0, refunds


def _bench_module() -> Any:
    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "bench" / "run.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_run", module)  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module


def test_the_refund_check_finds_an_over_refund(tmp_path: Path) -> None:
    """g's database check is able to fail: an over-refund, a refunded amount that is not
    its refunds' sum, a reservation left behind and a missing approved refund."""
    bench = _bench_module()
    path = tmp_path / "refunds.db"
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE transactions (id TEXT, account_id TEXT, amount_charged INTEGER,
            amount_refunded INTEGER, amount_refund_pending INTEGER);
        CREATE TABLE operations (transaction_id TEXT, kind TEXT, state TEXT, amount INTEGER);
        INSERT INTO transactions VALUES ('ok', 'bench-refund', 100000, 90000, 0),
            ('over', 'bench-refund', 100000, 105000, 0),
            ('sum', 'bench-refund', 100000, 30000, 0),
            ('held', 'bench-refund', 100000, 15000, 15000);
        INSERT INTO operations VALUES ('ok', 'refund', 'done', 45000),
            ('ok', 'refund', 'done', 45000), ('ok', 'charge', 'done', 100000),
            ('over', 'refund', 'done', 105000), ('sum', 'refund', 'done', 15000),
            ('held', 'refund', 'done', 15000), ('held', 'refund', 'pending', 15000);
        """
    )
    db.commit()
    db.close()
    url = f"sqlite:///{path}"
    row = {"ok": 5, "warmup_ok": 0, "wrk_connections": 1, "wrk_runs": 2}
    check = bench._check_refunds(url, [row])
    assert check["over_refunded"] == 1, check
    assert check["refunds_done"] == 5, check
    problems = " / ".join(check["problems"])
    assert "1 payments refunded more than was charged" in problems, problems
    assert "1 payments whose refunded amount != their refunds' sum" in problems, problems
    assert "1 payments with a refund still reserved or unfinished" in problems, problems
    assert "refunds done" not in problems, problems
    # more refunds answered as approved than the database holds
    missing = bench._check_refunds(url, [row | {"ok": 9}])
    assert any("5 refunds done in the database, 9 answered" in p for p in missing["problems"])


def test_the_in_process_harness_measures_every_kind_and_the_delivery_worker() -> None:
    """bench/inprocess.py: every request answered 200 (it asserts so) and a figure each."""
    script = str(ROOT / "bench" / "inprocess.py")
    run = subprocess.run(
        [sys.executable, script, "--requests", "20", "--warmup", "5", "--inline"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    lines = run.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["token", "pay", "status"], run.stdout
    assert all(float(line.split()[1]) > 0 for line in lines)
    run = subprocess.run(
        [sys.executable, script, "--postlinks", "30"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert run.stdout.startswith("postLinks: "), run.stdout
