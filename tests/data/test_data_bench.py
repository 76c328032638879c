"""Smoke test: the data bench runs end to end at a tiny size (its speed is not asserted)."""

from __future__ import annotations

import re
import subprocess
import sys

from data_helpers import REPO


def test_data_bench_runs() -> None:
    result = subprocess.run([sys.executable, str(REPO / "bench" / "data_bench.py"), "--rows", "200", "--repeats", "1"],
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    assert re.search(r"naive per-row loop \(seed\): +\d+ examples/s +\(200 examples\)", result.stdout)
    assert re.search(r"sftjob data pipeline: +\d+ examples/s", result.stdout)
    assert re.search(r"ratio pipeline/naive: \d+\.\d\dx", result.stdout)
    assert re.search(r"data cache cold \(prepare \+ store\): +\d+\.\d{3} s +\(\d+ examples\)", result.stdout)
    assert re.search(r"ratio cache warm/cold: \d+\.\d{3} +\(\d+\.\dx faster warm\)", result.stdout)
