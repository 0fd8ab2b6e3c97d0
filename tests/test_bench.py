"""The benchmark runs: a tiny ``bench/run.py --quick`` completes and reports sane numbers.

Not a timed test: it checks that every scenario answered, without errors, and that the
report has what BENCHMARKS.md reads from it; never how fast.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
