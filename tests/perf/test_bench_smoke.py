"""Each bench runs at a tiny size, so none can rot. Speed is never asserted: only that it ran and measured."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_train_throughput_tiny(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "train_throughput.py"), "--scale", "tiny", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    for config in ("A", "A2", "B", "ours"):
        assert f"| {config} |" in out
    assert "ours/A trained tok/s = " in out and "ours/B trained tok/s = " in out
    stats = json.loads((tmp_path / "assets-tiny" / "length_stats.json").read_text())
    assert stats["examples"] == 48


@pytest.mark.slow
def test_ray_overhead_tiny(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "ray_overhead.py"), "--scale", "tiny", "--workers", "1",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| plain | 1 |" in result.stdout and "| ray | 1 |" in result.stdout
    assert "`ray.init()` alone in a fresh process:" in result.stdout
