"""A tiny run of bench/operator_bench.py: it runs end to end and reports every figure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from support.operator_env import REPO


def test_operator_bench_smoke(tmp_path: Path) -> None:
    figures = tmp_path / "figures.json"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "operator_bench.py"),
            "--jobs",
            "3",
            "--interval",
            "0.3",
            "--train-seconds",
            "1.5",
            "--json",
            str(figures),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "x the raw create time" in result.stdout
    assert "writes/job/min" in result.stdout
    data = json.loads(figures.read_text())
    assert data["jobs"] == data["rayjob_creates"] == 3
    assert data["ratio_to_raw"] > 0 and data["writes_per_job_per_minute"] > 0
