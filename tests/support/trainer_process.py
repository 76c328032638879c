"""A trainer run in a subprocess of its own session (`sftjob run`, `python -m sftjob_trainer`), watched through its
progress.json and stopped with a signal: what tests/trainer/test_local_run.py and test_main.py share.

A session of its own means every process the run starts (a local Ray cluster's raylet, GCS and workers) can be
found by session id afterwards, and killed if a test fails half-way.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from sftjob_api.progress import ProgressFile

# Bounds that turn a hang into a failure instead of a blocked suite; none of them is a performance assertion.
# Starting a local Ray cluster and its Ray Train workers takes a minute or more on a loaded 2-core machine.
START_TIMEOUT_S = 400
# The run must be gone this long after the signal (it is required to stop training within 10 s).
STOP_TIMEOUT_S = 90
# What a crash prints: CPython's faulthandler, Ray's (absl's) failure signal handler, an uncaught exception.
CRASH_MARKERS = ("Fatal Python error", "*** SIGTERM received", "Stack trace", "Traceback")


def start(command: list[str], env: dict[str, str], stderr: Path) -> subprocess.Popen[bytes]:
    """Start `command` in a new session, its stderr to a file (a pipe nobody reads could fill and block it)."""
    with stderr.open("wb") as err:
        return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)


def session_processes(session: int) -> list[list[str]]:
    """Command lines of the live (not zombie) processes of a session."""
    found = []
    for process in psutil.process_iter():
        try:
            if os.getsid(process.pid) == session and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process.cmdline())
        except (ProcessLookupError, psutil.Error):
            continue
    return found


def kill_session(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL whatever is left of a run's session (the clean-up of a failed test)."""
    for process in psutil.process_iter():
        try:
            if os.getsid(process.pid) == proc.pid:
                process.kill()
        except (ProcessLookupError, psutil.Error):
            continue
    proc.wait()


def read_progress(output: Path) -> ProgressFile | None:
    """progress.json, or None before the first write."""
    try:
        return ProgressFile.model_validate_json((output / "progress.json").read_text())
    except (FileNotFoundError, ValueError):
        return None


def wait_for(proc: subprocess.Popen[bytes], stderr: Path, output: Path,
             ready: Callable[[ProgressFile], bool]) -> ProgressFile:
    """Poll progress.json until `ready` holds; fails if the run exits or START_TIMEOUT_S passes first."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        progress = read_progress(output)
        if progress is not None and ready(progress):
            return progress
        if proc.poll() is not None:
            pytest.fail(f"the run exited ({proc.returncode}) too early: {stderr.read_text()[-3000:]}")
        time.sleep(0.2)
    kill_session(proc)
    pytest.fail(f"progress.json never got there; last: {read_progress(output)}")


def wait_for_exit(proc: subprocess.Popen[bytes], stderr: Path, timeout_s: float) -> None:
    """Wait for the run to exit; fails (and kills its session) if it is still running after `timeout_s`."""
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        kill_session(proc)
        pytest.fail(f"still running after {timeout_s}s: {stderr.read_text()[-3000:]}")
