"""Operator settings, read once from the environment at start-up.

The Helm chart sets exactly these variables; each is documented on its field below and in
docs/operator.md. A malformed value stops the operator at start-up with a message naming the
variable (never later, in the middle of a reconcile).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from sftjob_api.types import DNS_LABEL_PATTERN, MAX_DNS_LABEL, QUANTITY_PATTERN

# The trainer image the operator uses when `spec.compute.image` is unset.
DEFAULT_TRAINER_IMAGE = "ghcr.io/sftjob/sftjob-trainer:0.1.0"
DEFAULT_PROGRESS_INTERVAL_SECONDS = 30.0
DEFAULT_METRICS_PORT = 9102
# Kopf's liveness probe endpoint (`python -m sftjob_operator --liveness=...` overrides it).
DEFAULT_LIVENESS_ENDPOINT = "http://0.0.0.0:8080/healthz"

_QUANTITY = re.compile(QUANTITY_PATTERN)
_DNS_LABEL = re.compile(DNS_LABEL_PATTERN)


class SettingsError(ValueError):
    """An environment variable holds a value the operator cannot use; the message names it."""


@dataclass(frozen=True)
class Settings:
    """What the operator reads from its environment."""

    watch_namespaces: tuple[str, ...] = ()
    """`SFTJOB_WATCH_NAMESPACES`: comma-separated namespaces to watch (one or several); empty or
    unset watches all namespaces (cluster-wide)."""

    progress_interval_seconds: float = DEFAULT_PROGRESS_INTERVAL_SECONDS
    """`SFTJOB_PROGRESS_INTERVAL_SECONDS` (default 30): how often each running job's
    `progress.json` is read and its status refreshed. This bounds the status write rate: at most
    one status patch per job per interval while it trains (fewer when nothing changed)."""

    trainer_image: str = DEFAULT_TRAINER_IMAGE
    """`SFTJOB_TRAINER_IMAGE`: the trainer image for jobs whose `spec.compute.image` is unset."""

    default_worker_cpu: str | None = None
    """`SFTJOB_DEFAULT_WORKER_CPU`: CPU cores per worker (a whole number) for jobs whose
    `spec.compute.cpusPerWorker` is at its API default (4). Unset: the API default stays."""

    default_worker_memory: str | None = None
    """`SFTJOB_DEFAULT_WORKER_MEMORY`: memory per worker (a Kubernetes quantity, e.g. `64Gi`) for
    jobs whose `spec.compute.memoryPerWorker` is at its API default (`32Gi`). Unset: the API
    default stays."""

    metrics_port: int = DEFAULT_METRICS_PORT
    """`SFTJOB_METRICS_PORT` (default 9102): port of the Prometheus `/metrics` endpoint; 0 turns
    the endpoint off."""

    @property
    def clusterwide(self) -> bool:
        """Whether the operator watches every namespace."""
        return not self.watch_namespaces

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read the settings from environment variables.

        Args:
            env: The environment (default: `os.environ`).

        Returns:
            The settings.

        Raises:
            SettingsError: When a variable is malformed; the message names it.
        """
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        namespaces = tuple(n.strip() for n in (get("SFTJOB_WATCH_NAMESPACES") or "").split(",") if n.strip())
        for namespace in namespaces:
            if not _DNS_LABEL.fullmatch(namespace) or len(namespace) > MAX_DNS_LABEL:
                raise SettingsError(f"SFTJOB_WATCH_NAMESPACES: {namespace!r} is not a namespace name")

        interval = DEFAULT_PROGRESS_INTERVAL_SECONDS
        if raw := get("SFTJOB_PROGRESS_INTERVAL_SECONDS"):
            try:
                interval = float(raw)
            except ValueError:
                raise SettingsError(f"SFTJOB_PROGRESS_INTERVAL_SECONDS: {raw!r} is not a number of seconds") from None
            if not 0 < interval <= 3600:
                raise SettingsError(f"SFTJOB_PROGRESS_INTERVAL_SECONDS: {raw!r} must be in (0, 3600]")

        cpu = get("SFTJOB_DEFAULT_WORKER_CPU")
        if cpu is not None and not (cpu.isdigit() and int(cpu) >= 1):
            raise SettingsError(
                f"SFTJOB_DEFAULT_WORKER_CPU: {cpu!r} must be a whole number of cores (Ray counts whole CPUs)"
            )
        memory = get("SFTJOB_DEFAULT_WORKER_MEMORY")
        if memory is not None and not _QUANTITY.fullmatch(memory):
            raise SettingsError(f"SFTJOB_DEFAULT_WORKER_MEMORY: {memory!r} is not a Kubernetes quantity such as 64Gi")

        port = DEFAULT_METRICS_PORT
        if raw := get("SFTJOB_METRICS_PORT"):
            if not raw.isdigit() or int(raw) > 65535:
                raise SettingsError(f"SFTJOB_METRICS_PORT: {raw!r} is not a port number (0 turns metrics off)")
            port = int(raw)

        return cls(
            watch_namespaces=namespaces,
            progress_interval_seconds=interval,
            trainer_image=get("SFTJOB_TRAINER_IMAGE") or DEFAULT_TRAINER_IMAGE,
            default_worker_cpu=cpu,
            default_worker_memory=memory,
            metrics_port=port,
        )
