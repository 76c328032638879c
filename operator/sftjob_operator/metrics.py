"""Prometheus metrics of the operator, served on `/metrics` (port `SFTJOB_METRICS_PORT`)."""

from __future__ import annotations

from typing import Any, get_args

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from sftjob_api.types import Phase

# Every phase gets a series, zero included, so a dashboard sees a phase empty rather than missing.
PHASES: tuple[str, ...] = get_args(Phase)

JOBS = Gauge("sftjob_jobs", "SFTJobs seen by this operator, by phase.", ["phase"])
RECONCILE_SECONDS = Histogram(
    "sftjob_reconcile_duration_seconds",
    "Time of one reconcile of one SFTJob, by what triggered it.",
    ["trigger"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
API_REQUESTS = Counter(
    "sftjob_kubernetes_api_requests_total", "Kubernetes API calls made by the operator.", ["resource", "verb"]
)
API_ERRORS = Counter(
    "sftjob_kubernetes_api_errors_total",
    "Kubernetes API calls that failed, by HTTP status (0: no response).",
    ["resource", "verb", "code"],
)
STATUS_PATCHES = Counter("sftjob_status_patches_total", "Status writes (only made when the status changed).")
PROGRESS_READ_ERRORS = Counter("sftjob_progress_read_errors_total", "progress.json reads that failed.")


class PhaseTracker:
    """Keeps the `sftjob_jobs{phase}` gauge equal to the count of known jobs per phase."""

    def __init__(self) -> None:
        self._phases: dict[str, str] = {}
        for phase in PHASES:
            JOBS.labels(phase).set(0)

    def set(self, uid: str, phase: str | None) -> None:
        """Record the phase of a job (None forgets it)."""
        old = self._phases.get(uid)
        if old == phase:
            return
        if old is not None:
            JOBS.labels(old).dec()
            del self._phases[uid]
        if phase is not None:
            self._phases[uid] = phase
            JOBS.labels(phase).inc()


def serve(port: int) -> Any:
    """Start the `/metrics` HTTP server in a thread; returns the server (call `.shutdown()` to stop)."""
    server, _thread = start_http_server(port)
    return server
