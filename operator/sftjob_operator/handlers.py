"""Kopf glue: which events call the service layer. No logic lives here.

`register()` puts the handlers into a registry; the service layer is built by the startup handler
(after Kopf has logged in), so that importing this module does no I/O. Importing it also fills
Kopf's default registry with settings from the environment: that is what the operator image runs,
`kopf run --standalone -m sftjob_operator.handlers --liveness=http://0.0.0.0:8080/healthz` plus
`--all-namespaces` or one `--namespace=NS` per entry of `SFTJOB_WATCH_NAMESPACES`.
Tests and `python -m sftjob_operator` register into a registry of their own.
Kopf's own bookkeeping (handler progress, the last handled spec) goes to annotations under
`sftjob.dev/`, never to `.status`, which the operator owns.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import kopf

from sftjob_api.kuberay import RAYJOB_RESOURCE
from sftjob_api.types import GROUP, PLURAL, VERSION
from sftjob_operator import metrics
from sftjob_operator.rayjob import LABEL_NAME
from sftjob_operator.service import TRIGGER_SPEC, TRIGGER_TIMER, Reconciler
from sftjob_operator.settings import Settings

SFTJOBS = (GROUP, VERSION, PLURAL)
ANNOTATION_PREFIX = GROUP
FINALIZER = f"{GROUP}/kopf-finalizer"
# Failed reconciles of spec changes are retried after this many seconds (timers retry anyway).
RETRY_BACKOFF_SECONDS = 5.0


def configure_kopf(kopf_settings: kopf.OperatorSettings) -> None:
    """Kopf settings: bookkeeping in annotations, our finalizer name, events as `sftjob-operator`."""
    kopf_settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    kopf_settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    kopf_settings.persistence.finalizer = FINALIZER
    kopf_settings.posting.reporting_component = "sftjob-operator"
    kopf_settings.posting.loggers = False  # only the events the service posts, never log lines
    # A deleted job's finalizer waits for a timer tick that is still running; re-check every second, not 60.
    kopf_settings.background.cancellation_polling = 1.0


def default_service(settings: Settings) -> Reconciler:
    """The service layer with a Kubernetes client configured from the environment (in-cluster or KUBECONFIG)."""
    from sftjob_operator.kube import KubeClient

    return Reconciler(KubeClient(), settings)


def register(
    registry: kopf.OperatorRegistry,
    operator_settings: Settings,
    make_service: Callable[[Settings], Reconciler] = default_service,
) -> None:
    """Register the operator's handlers.

    Args:
        registry: The Kopf registry to fill.
        operator_settings: Operator settings (the timer interval, the metrics port, ...).
        make_service: Builds the service layer at start-up.
    """
    state: dict[str, Any] = {}

    def service() -> Reconciler:
        reconciler: Reconciler = state["service"]
        return reconciler

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # A registry of our own has none of the default login handlers: use the client's config.
        return kopf.login_via_client(**kwargs)

    @kopf.on.startup(registry=registry)
    def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure_kopf(settings)
        state["service"] = make_service(operator_settings)
        if operator_settings.metrics_port:
            state["metrics"] = metrics.serve(operator_settings.metrics_port)

    @kopf.on.cleanup(registry=registry)
    def cleanup(**_: Any) -> None:
        if "metrics" in state:
            state.pop("metrics").shutdown()

    @kopf.on.resume(*SFTJOBS, registry=registry, backoff=RETRY_BACKOFF_SECONDS)
    @kopf.on.create(*SFTJOBS, registry=registry, backoff=RETRY_BACKOFF_SECONDS)
    @kopf.on.update(*SFTJOBS, field="spec", registry=registry, backoff=RETRY_BACKOFF_SECONDS)
    async def reconcile_spec(body: kopf.Body, **_: Any) -> None:
        await service().reconcile(body, TRIGGER_SPEC)

    interval = operator_settings.progress_interval_seconds

    @kopf.timer(*SFTJOBS, interval=interval, backoff=interval, registry=registry)
    async def refresh(body: kopf.Body, **_: Any) -> None:
        await service().reconcile(body, TRIGGER_TIMER)

    @kopf.on.event(*RAYJOB_RESOURCE, labels={LABEL_NAME: kopf.PRESENT}, registry=registry)
    async def rayjob_changed(body: kopf.Body, **_: Any) -> None:
        await service().on_rayjob(body)

    @kopf.on.event(*SFTJOBS, registry=registry)
    def sftjob_event(type: str | None, body: kopf.Body, **_: Any) -> None:
        if type == "DELETED" and "service" in state:
            service().forget(str(body["metadata"].get("uid")))


register(kopf.get_default_registry(), Settings.from_env())
