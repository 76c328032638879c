"""One reconcile of one SFTJob: observe, derive (pure) once, act, write the status once if it changed.

Level-based: every reconcile recomputes from what it observes (the SFTJob, the current attempt's
RayJob, `progress.json`), whichever handler triggered it. What it remembers between calls is
only an optimisation: the status it last wrote per job (so that a watch event that lags behind
our own write does not cause a second write or a repeated event), and cached Secrets.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import ValidationError

from sftjob_api.codes import ErrorCode, Reason
from sftjob_api.field_problems import check_document
from sftjob_api.timestamps import parse_rfc3339
from sftjob_api.types import SFTJob, SFTJobStatus
from sftjob_operator import metrics
from sftjob_operator.conditions import Event
from sftjob_operator.kube import ApiError, KubeClient
from sftjob_operator.kuberay_state import TERMINAL_PHASES, RayState, classify_rayjob
from sftjob_operator.output_reader import ProgressReader
from sftjob_operator.pods import PodProblem, diagnose_pods, pod_selector, should_list_pods
from sftjob_operator.progress_status import ProgressSnapshot
from sftjob_operator.rayjob import LABEL_NAME, build_rayjob, check_renderable, rayjob_name
from sftjob_operator.settings import Settings
from sftjob_operator.status import derive_invalid, derive_status

logger = logging.getLogger("sftjob_operator")

TRIGGER_SPEC = "spec"
TRIGGER_TIMER = "timer"
TRIGGER_RAYJOB = "rayjob"


class OwnershipConflict(Exception):
    """The attempt's RayJob cannot be adopted now; Kopf retries the reconcile.

    It belongs to another object (e.g. a deleted namesake not yet collected), or it vanished between
    a 409 on create and the read that followed.
    """


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _parse_status(raw: Any) -> SFTJobStatus:
    try:
        return SFTJobStatus.model_validate(raw or {}, by_alias=True)
    except ValidationError:
        logger.warning("ignoring a status that does not parse; it will be rewritten")
        return SFTJobStatus()


def _controller_uid(obj: Mapping[str, Any]) -> str | None:
    for ref in obj.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("uid"))
    return None


class Reconciler:
    """The service layer under the Kopf handlers."""

    def __init__(
        self,
        kube: KubeClient,
        settings: Settings,
        *,
        reader: ProgressReader | None = None,
        clock: Callable[[], dt.datetime] = _utcnow,
    ) -> None:
        self.kube = kube
        self.settings = settings
        self.reader = reader or ProgressReader(kube.read_secret)
        self.clock = clock
        self.phases = metrics.PhaseTracker()
        self._locks: dict[str, asyncio.Lock] = {}
        self._written: dict[str, dict[str, Any]] = {}
        self._problems: dict[str, str | None] = {}
        self._pods_listed: dict[str, float] = {}
        self._pods_failing: dict[str, str | None] = {}

    def forget(self, uid: str) -> None:
        """Drop what is remembered about a deleted job."""
        self._locks.pop(uid, None)
        self._written.pop(uid, None)
        self._problems.pop(uid, None)
        self._pods_listed.pop(uid, None)
        self._pods_failing.pop(uid, None)
        self.phases.set(uid, None)

    async def reconcile(self, body: Mapping[str, Any], trigger: str) -> None:
        """Bring one SFTJob and its RayJob in line with its spec and write its status.

        The RayJob is always read afresh under the job's lock: a watch event handed to us may
        already be older than what another reconcile saw, and acting on it would flip the phase back.

        Args:
            body: The SFTJob as last seen.
            trigger: What caused the call (`spec`, `timer`, `rayjob`), for metrics and progress reads.
        """
        meta = body.get("metadata", {})
        if meta.get("deletionTimestamp"):
            return
        uid = str(meta.get("uid"))
        lock = self._locks.setdefault(uid, asyncio.Lock())
        async with lock:
            with metrics.RECONCILE_SECONDS.labels(trigger).time():
                await self._reconcile(body, trigger)

    async def on_rayjob(self, rayjob: Mapping[str, Any]) -> None:
        """React to a RayJob change: reconcile the SFTJob that owns it."""
        meta = rayjob.get("metadata", {})
        owner_name = (meta.get("labels") or {}).get(LABEL_NAME)
        namespace = meta.get("namespace")
        if not owner_name or not namespace:
            return
        body = await self.kube.get_sftjob(namespace, owner_name)
        if body is None or _controller_uid(rayjob) != body["metadata"].get("uid"):
            return
        await self.reconcile(body, TRIGGER_RAYJOB)

    async def _reconcile(self, body: Mapping[str, Any], trigger: str) -> None:
        meta = body["metadata"]
        uid, namespace, name = str(meta["uid"]), meta["namespace"], meta["name"]
        generation = meta.get("generation")
        previous = _parse_status(self._written.get(uid, body.get("status")))
        before = previous.to_wire()
        now = self.clock()

        document = {
            "apiVersion": body.get("apiVersion"),
            "kind": body.get("kind"),
            "metadata": {"name": name, "namespace": namespace, "uid": uid},
            "spec": body.get("spec"),
        }
        job, problems = check_document(document)
        if job is not None:
            problems = check_renderable(job)
        if job is None or problems:
            derivation = derive_invalid(previous, problems, generation=generation, now=now)
        else:
            rayjob, snapshot, pods = await self._observe(job, previous, trigger)
            derivation = derive_status(
                job, previous, generation=generation, now=now, rayjob=rayjob, snapshot=snapshot, pods=pods
            )
            if derivation.create_attempt is not None:
                # Its state is the next reconcile's to observe (the watch event of the create, or the timer
                # for a RayJob adopted), so the status is derived and written once.
                created = await self._ensure_rayjob(job, derivation.create_attempt, derivation.status, now)
                derivation.events.extend(created)

        if derivation.set_suspend is not None and derivation.status.ray_job is not None:
            await self.kube.set_rayjob_suspend(namespace, derivation.status.ray_job.name, derivation.set_suspend)
        if derivation.delete_rayjob:
            await self.kube.delete_rayjob(namespace, derivation.delete_rayjob)

        after = derivation.status.to_wire()
        if after != before:
            await self.kube.replace_sftjob_status(namespace, name, after)
            metrics.STATUS_PATCHES.inc()
            self._written[uid] = after
        self.phases.set(uid, derivation.status.phase)
        for event in derivation.events:
            self.kube.post_event(body, event.type, event.reason, event.message)
            log = logger.warning if event.type == "Warning" else logger.info
            log("%s/%s: %s: %s", namespace, name, event.reason, event.message)
        if derivation.delete_job:
            logger.info("%s/%s: ttlSecondsAfterFinished passed; deleting the SFTJob (artifacts stay)", namespace, name)
            await self.kube.delete_sftjob(namespace, name)
            self.forget(uid)

    async def _observe(
        self, job: SFTJob, previous: SFTJobStatus, trigger: str
    ) -> tuple[Mapping[str, Any] | None, ProgressSnapshot | None, list[PodProblem] | None]:
        """What `derive_status` needs to see of the current attempt: its RayJob, progress.json and pods.

        A job that ended, or has no attempt yet, needs none of them; progress.json is read on the timer and
        once the attempt ended, the pods when `_pods_due` says so.
        """
        namespace = job.metadata.namespace or ""
        active = previous.phase not in TERMINAL_PHASES and not (
            previous.error is not None and previous.error.code == ErrorCode.INVALID_SPEC
        )
        if not active or not previous.attempt:
            return None, None, None
        rayjob = await self.kube.get_rayjob(namespace, rayjob_name(job.name, previous.attempt))
        if rayjob is not None:
            self._check_owner(rayjob, job)
        ray = classify_rayjob((rayjob or {}).get("status"))
        snapshot: ProgressSnapshot | None = None
        pods: list[PodProblem] | None = None
        if trigger == TRIGGER_TIMER or ray.terminal:
            snapshot = await self._read_progress(job, manifest=ray.phase == "Succeeded")
        if rayjob is not None and self._pods_due(job, previous, rayjob, ray, trigger):
            pods = await self._diagnose_pods(job, previous.attempt)
        return rayjob, snapshot, pods

    async def _ensure_rayjob(self, job: SFTJob, attempt: int, status: SFTJobStatus, now: dt.datetime) -> list[Event]:
        """Create the RayJob of `attempt`, or adopt the one of that name this SFTJob controls.

        Returns:
            The `RayJobCreated` event of a RayJob this call created; none for one it adopted.
        """
        namespace = job.metadata.namespace or ""
        name = rayjob_name(job.name, attempt)
        existing = await self.kube.get_rayjob(namespace, name)
        if existing is not None:
            self._check_owner(existing, job)
            return []
        deadline = job.spec.run_policy.active_deadline_seconds
        started = parse_rfc3339(status.start_time)
        if deadline is not None and started is not None:
            deadline = max(1, int(deadline - (now - started).total_seconds()))
        manifest = build_rayjob(job, attempt, self.settings, active_deadline_seconds=deadline)
        created = await self.kube.create_rayjob(manifest)
        if created is None:  # created meanwhile (409): adopt it
            created = await self.kube.get_rayjob(namespace, name)
            if created is None:
                # Gone again before we could read it: do not record the attempt as started (its missing
                # RayJob would then count as deleted); the reconcile is retried.
                raise OwnershipConflict(f"RayJob {name} existed at creation and was gone right after; retrying")
            self._check_owner(created, job)
            return []
        return [Event("Normal", Reason.RAYJOB_CREATED, f"RayJob {name} runs attempt {attempt}")]

    def _check_owner(self, rayjob: Mapping[str, Any], job: SFTJob) -> None:
        uid = job.metadata.uid
        owner = _controller_uid(rayjob)
        if owner != uid:
            raise OwnershipConflict(
                f"RayJob {rayjob['metadata']['name']} is controlled by {owner}, not by this SFTJob ({uid}); "
                "waiting for it to be garbage-collected"
            )

    def _pods_due(
        self, job: SFTJob, previous: SFTJobStatus, rayjob: Mapping[str, Any], ray: RayState, trigger: str
    ) -> bool:
        """Whether this reconcile lists the attempt's pods (the throttle is `pods.should_list_pods`)."""
        if (rayjob.get("metadata") or {}).get("deletionTimestamp"):
            return False
        uid = str(job.metadata.uid)
        listed = self._pods_listed.get(uid)
        condition = next((c for c in previous.conditions if c.type == Reason.PODS_HEALTHY), None)
        return should_list_pods(
            attempt_phase=ray.phase,
            started=bool((rayjob.get("status") or {}).get("jobDeploymentStatus")),
            suspended=bool((rayjob.get("spec") or {}).get("suspend")) or job.spec.run_policy.suspend,
            unhealthy=condition is not None and condition.status == "False",
            timer=trigger == TRIGGER_TIMER,
            since_last=None if listed is None else time.monotonic() - listed,
            interval=self.settings.progress_interval_seconds,
        )

    async def _diagnose_pods(self, job: SFTJob, attempt: int) -> list[PodProblem] | None:
        """What is wrong with the attempt's pods; None when they cannot be listed (the diagnosis is optional)."""
        namespace = job.metadata.namespace or ""
        uid = str(job.metadata.uid)
        self._pods_listed[uid] = time.monotonic()
        try:
            items = await self.kube.list_pods(namespace, pod_selector(job.name, attempt))
        except ApiError as err:
            # E.g. 403 from a chart older than the operator (no `list pods`): the job runs on, undiagnosed.
            failure = f"{err.status} {err.reason}"
            if self._pods_failing.get(uid) != failure:
                logger.warning("%s/%s: cannot list the pods of attempt %d: %s", namespace, job.name, attempt, failure)
            self._pods_failing[uid] = failure
            return None
        self._pods_failing[uid] = None
        # No pods (not created yet, or already deleted) tell nothing: the condition keeps what it had.
        return diagnose_pods(items, namespace=namespace) if items else None

    async def _read_progress(self, job: SFTJob, *, manifest: bool) -> ProgressSnapshot:
        snapshot = await self.reader.read(job, manifest=manifest)
        uid = str(job.metadata.uid)
        if snapshot.problem is not None:
            metrics.PROGRESS_READ_ERRORS.inc()
        if snapshot.problem != self._problems.get(uid):
            if snapshot.problem is not None:
                logger.warning("%s/%s: cannot read progress: %s", job.metadata.namespace, job.name, snapshot.problem)
            self._problems[uid] = snapshot.problem
        return snapshot
