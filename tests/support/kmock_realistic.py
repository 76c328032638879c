"""A thin layer over kmock.KubernetesEmulator that adds the apiserver behaviours Kopf relies on.

KMock 0.8 stores objects verbatim: no resourceVersion/uid/creationTimestamp/generation,
no status-subresource split, no label selectors, no PUT, no server-side apply, no owner GC.
Kopf 1.45 adds finalizers via a JSON-patch guarded by `test /metadata/resourceVersion`,
which fails (HTTP 500) on objects without a resourceVersion. This subclass fixes that.

Added for the operator tests (tests/operator/) and the benchmark (bench/operator_bench.py):
- `inject_fault(...)`: the next N matching requests fail with a chosen status (5xx, 409, ...),
  raised as `InjectedFault`, so a fixture can tell requested failures from real server errors;
- server-side printing: `kubectl get` asks for a meta.k8s.io Table and gets the CRD's
  additionalPrinterColumns (without it kubectl falls back to NAME and AGE only);
- a bounded request log (kmock scans its whole log for every request: quadratic without it);
- `writes`: every successful mutating request (create/update/delete), with its time, resource,
  subresource and object name, to count creates and API writes per job; `keep_bodies` names the
  resources whose object, as stored after each write, is kept too (to check a status never regresses);
- Namespaces: `/api/v1/namespaces[/NAME]` is served as the cluster-scoped resource it is (KMock's path
  parser reads `namespaces` as the namespace prefix and fails), so Kopf can list and watch them;
- `trip(...)`: call a function (a test kills the operator process there) at the n-th write that
  matches, before it is applied (the write is then refused) or right after.
"""

import copy
import dataclasses
import datetime
import itertools
import re
import time
import uuid
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import jsonpointer
import kmock
from kmock._internal import dicts as kdicts
from kmock._internal import enums, parsing, rendering

_parse_path = parsing.parse_path


def _parse_path_with_namespaces(path: str) -> parsing.ParsedPath:
    """KMock's path parser, plus `/api/v1/namespaces` and `/api/v1/namespaces/NAME` as the Namespace resource.

    KMock reads `namespaces/X` as the namespace prefix of a namespaced resource, so listing Namespaces
    raised ValueError (HTTP 500) and fetching one found no resource. A namespaced path always has a
    plural after the namespace, so these two shapes are unambiguous, as they are for the API server.
    """
    parts = path.strip("/").split("/")
    if parts[:3] == ["api", "v1", "namespaces"] and len(parts) in (3, 4):
        return parsing.ParsedPath("", "v1", "namespaces", None, parts[3] if len(parts) == 4 else None, None)
    return _parse_path(path)


# Module-level: `rendering.Request._parse` calls `parsing.parse_path` by module attribute.
parsing.parse_path = _parse_path_with_namespaces


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_SEL = re.compile(r"^\s*(!?)([\w./-]+)\s*(?:(==|=|!=)\s*([\w./-]*)|\s+(in|notin)\s*\(([^)]*)\))?\s*$")


def _split_selector(s: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in s:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return [p for p in [*parts, cur] if p.strip()]


def match_labels(selector: str | None, labels: dict[str, str]) -> bool:
    if not selector:
        return True
    for term in _split_selector(selector):
        m = _SEL.match(term)
        if not m:
            raise kmock.KubernetesError(status=400, reason="BadRequest", message=f"bad selector {term!r}")
        neg, key, op, val, setop, setvals = m.groups()
        if neg:
            ok = key not in labels
        elif op in ("=", "=="):
            ok = labels.get(key) == val
        elif op == "!=":
            ok = labels.get(key) != val
        elif setop:
            vals = {v.strip() for v in setvals.split(",")}
            ok = (labels.get(key) in vals) if setop == "in" else (labels.get(key) not in vals)
        else:
            ok = key in labels
        if not ok:
            return False
    return True


# Finished requests kept in kmock's log. KMock finds each reaction's requests by applying the reaction's
# filters to the whole log, for every request: at 16 that was three quarters of the emulator's CPU with
# 200 jobs. Nothing reads the log afterwards (tests count `writes`); requests in flight always stay.
REQUEST_LOG = 1


def _wants_table(request) -> bool:
    return "as=Table" in (request.headers.get("Accept") or "")


def _json_path(obj: Any, path: str) -> Any:
    """The value at a simple printer-column JSONPath such as `.status.progress.step` (None when absent)."""
    for part in path.strip(".").split("."):
        if not isinstance(obj, dict):
            return None
        obj = obj.get(part)
    return obj


def _age(timestamp: str) -> str:
    """A creation timestamp as kubectl shows ages: 5s, 3m, 2h, 4d."""
    then = datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    seconds = int((datetime.datetime.now(datetime.UTC) - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size * (2 if unit != "d" else 1):
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


@attrs.frozen
class InjectedFault(kmock.KubernetesError):
    """A failure a test asked for with `inject_fault` (never a bug of the emulator)."""


@dataclasses.dataclass
class Fault:
    """Fail the next `times` requests of `action` on `plural` (and `subresource`) with `status`."""

    action: str
    plural: str
    status: int
    times: int
    subresource: str | None = None
    name: str | None = None


@dataclasses.dataclass(frozen=True)
class Write:
    """One successful mutating request."""

    at: float
    action: str
    plural: str
    subresource: str | None
    namespace: str | None
    name: str | None
    involved: str | None = None
    """For an Event: the name of the object it is about."""
    body: dict | None = None
    """The object as stored after the write, for the resources in `keep_bodies`."""

    @property
    def about(self) -> str | None:
        """The object this write concerns: the involved object of an Event, else the object written."""
        return self.involved or self.name


@dataclasses.dataclass
class Tripwire:
    """Call `trip(write)` at the `nth` write for which `match(write)` holds, `before` it is applied or after.

    A write tripped before it is applied is refused (503): the test has killed its sender meanwhile.
    """

    match: Any
    nth: int
    before: bool
    trip: Any
    seen: int = 0
    fired: Write | None = None


@attrs.define(kw_only=True)
class RealisticEmulator(kmock.KubernetesEmulator):
    _rv: Any = attrs.field(factory=lambda: itertools.count(1), init=False)
    _faults: list = attrs.field(factory=list, init=False)
    writes: list = attrs.field(factory=list, init=False)
    keep_bodies: set = attrs.field(factory=set, init=False)
    tripwires: list = attrs.field(factory=list, init=False)
    _inflight: set = attrs.field(factory=set, init=False)
    kubeconfig: Any = attrs.field(default=None, init=False)  # set by the fixtures: a kubeconfig file for it

    def inject_fault(
        self,
        action: str,
        plural: str,
        *,
        status: int = 503,
        times: int = 1,
        subresource: str | None = None,
        name: str | None = None,
    ) -> Fault:
        """Make the next `times` matching requests fail with `status` (action: create/update/delete/fetch/list)."""
        fault = Fault(
            action=action.upper(), plural=plural, status=status, times=times, subresource=subresource, name=name
        )
        self._faults.append(fault)
        return fault

    def _check_faults(self, request) -> None:
        for fault in self._faults:
            if (
                fault.times > 0
                and request.action.value == fault.action
                and request.resource.plural == fault.plural
                and request.subresource == fault.subresource
                and (fault.name is None or fault.name == request.name)
            ):
                fault.times -= 1
                raise InjectedFault(status=fault.status, reason="Injected", message=f"injected {fault.status}")

    def trip(self, match: Any, nth: int, *, before: bool, trip: Any) -> Tripwire:
        """Call `trip(write)` at the `nth` write (1-based) that `match(write)` accepts (see `Tripwire`)."""
        wire = Tripwire(match=match, nth=nth, before=before, trip=trip)
        self.tripwires.append(wire)
        return wire

    def _tripped(self, write: Write, *, before: bool) -> bool:
        for wire in self.tripwires:
            if wire.fired is None and wire.before == before and wire.match(write):
                wire.seen += 1
                if wire.seen == wire.nth:
                    wire.fired = write
                    wire.trip(write)
                    return True
        return False

    def count_writes(self, action: str, plural: str, subresource: str | None = None) -> int:
        """How many successful `action` requests (create/update/delete) were made on `plural`."""
        return sum(
            1 for w in self.writes if w.action == action.upper() and w.plural == plural and w.subresource == subresource
        )

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        # kubectl `get -w` rejects kmock's default application/octet-stream watch responses.
        (
            (self.fallback**1)[enums.action.WATCH]
            << kmock.headers({"Content-Type": "application/json"})
            << self._serve_watch
        )

    _schemas: dict = attrs.field(factory=dict, init=False)
    _columns: dict = attrs.field(factory=dict, init=False)

    def register_crd(self, crd: dict) -> None:
        """Declare a resource from a CRD manifest (the project's real YAML) + remember its schema."""
        spec, names = crd["spec"], crd["spec"]["names"]
        for v in spec["versions"]:
            res = kmock.resource(spec["group"], v["name"], names["plural"])
            self.resources[res] = kmock.ResourceInfo(
                kind=names["kind"],
                singular=names.get("singular", names["kind"].lower()),
                namespaced=spec["scope"] == "Namespaced",
                shortnames=names.get("shortNames", []),
                categories=names.get("categories", []),
                subresources=set(v.get("subresources", {})),
                verbs=["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
            )
            if "schema" in v:
                self._schemas[res] = v["schema"]["openAPIV3Schema"]
            self._columns[res] = v.get("additionalPrinterColumns", [])

    def _validate(self, resource, obj: dict) -> None:
        schema = self._schemas.get(resource)
        if schema is None:
            return
        from openapi_schema_validator import OAS30Validator

        errs = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in OAS30Validator(schema).iter_errors(obj)]
        if errs:
            raise kmock.KubernetesError(status=422, reason="Invalid", message="; ".join(errs))

    def _swap(self, old, new):
        # kmock matches reactions by request identity against its request log: replace the logged one.
        for i, r in enumerate(self._requests):
            if r is old:
                self._requests[i] = new
        self._inflight.add(id(new))  # served until the response: never trimmed from the log
        return new

    def _next_rv(self) -> str:
        return str(next(self._rv))

    def _has_status_sub(self, resource) -> bool:
        return resource in self.resources and "status" in self.resources[resource].subresources

    def _current(self, request) -> dict | None:
        key = (request.resource, request.namespace, request.name)
        if key in self.objects and not self.objects[key].deleted:
            return self.objects[key].raw
        return None

    async def _handle(self, request: rendering.Request):
        # kmock matches each request against its whole request log (O(log) per request): keep a short
        # one, but never drop a request still being served (watches, and those waiting for the lock).
        if len(self._requests) > 2 * REQUEST_LOG:
            older = [r for r in self._requests[:-REQUEST_LOG] if id(r) in self._inflight]
            self._requests[:] = older + self._requests[-REQUEST_LOG:]
        self._inflight.add(id(request))
        try:
            return await self._handle_tracked(request)
        finally:
            self._inflight.discard(id(request))

    async def _handle_tracked(self, request: rendering.Request):
        if request.resource is None:
            return await super()._handle(request)
        self._check_faults(request)
        ctype = (request.headers.get("Content-Type") or "").split(";")[0].strip()
        collect = request.action == enums.action.DELETE
        rv = self._next_rv()

        # PUT (replace) and server-side apply of an absent object are not understood by kmock: translate.
        if request.method == enums.method.PUT and request.name:
            cur = self._current(request)
            if cur is None:
                raise kmock.KubernetesObjectNotFoundError()
            new = dict(request.data)
            sent_rv = new.get("metadata", {}).get("resourceVersion")
            if sent_rv and sent_rv != cur["metadata"].get("resourceVersion"):
                raise kmock.KubernetesError(status=409, reason="Conflict", message="the object has been modified")
            if self._has_status_sub(request.resource) and request.subresource != "status":
                new.pop("status", None)
                if "status" in cur:
                    new["status"] = cur["status"]
            new["metadata"] = {**cur["metadata"], **new.get("metadata", {}), "resourceVersion": rv}
            request = self._swap(
                request,
                attrs.evolve(request, action=enums.action.UPDATE, data=[{"op": "replace", "path": "", "value": new}]),
            )
        elif (
            request.action == enums.action.UPDATE
            and ctype == "application/apply-patch+yaml"
            and self._current(request) is None
        ):
            data = dict(request.data)
            data.setdefault("metadata", {}).setdefault("namespace", request.namespace)
            request = self._swap(request, attrs.evolve(request, action=enums.action.CREATE, data=data))

        if request.params.get("dryRun") and request.action in (enums.action.CREATE, enums.action.UPDATE):
            # kmock ignores ?dryRun=All and would persist the object: answer without storing.
            cur = self._current(request) or {}
            result = request.data if request.action == enums.action.CREATE else kdicts.patch_dict(cur, request.data)
            return aiohttp.web.json_response(result)

        if request.action == enums.action.CREATE:
            self._validate(request.resource, request.data)
            meta = request.data.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                # 10 hex digits: 5 (kmock's) collide within a few thousand generated names (events).
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:10]
            if request.namespace:
                meta["namespace"] = request.namespace
            meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), resourceVersion=rv, generation=1)
            if self._has_status_sub(request.resource):
                request.data.pop("status", None)

        elif request.action == enums.action.UPDATE and request.name:
            cur = self._current(request)
            if cur is None:
                raise kmock.KubernetesObjectNotFoundError()
            # Releasing the last finalizer of an object marked for deletion deletes it.
            collect = collect or bool(cur["metadata"].get("deletionTimestamp"))
            status_sub = self._has_status_sub(request.resource)
            if isinstance(request.data, list):  # JSON patch
                ops = list(request.data)
                try:  # pre-validate, so that failed `test` ops give 422 as in K8s (kmock gives 500)
                    jsonpatch.apply_patch(cur, ops, in_place=False)
                except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as e:
                    raise kmock.KubernetesError(status=422, reason="Invalid", message=str(e)) from e
                if status_sub and request.subresource == "status":
                    ops = [op for op in ops if op["path"].startswith("/status") or op["op"] == "test"]
                elif status_sub:
                    ops = [op for op in ops if not op["path"].startswith("/status")]
                spec_changed = any(op["path"].startswith("/spec") for op in ops)
                ops.append({"op": "add", "path": "/metadata/resourceVersion", "value": rv})
                if spec_changed:
                    ops.append(
                        {"op": "add", "path": "/metadata/generation", "value": cur["metadata"].get("generation", 1) + 1}
                    )
                request.data[:] = ops
            elif isinstance(request.data, dict):  # merge / strategic-merge (treated as merge) / apply
                sent_rv = (request.data.get("metadata") or {}).get("resourceVersion")
                if sent_rv and sent_rv != cur["metadata"].get("resourceVersion"):
                    raise kmock.KubernetesError(status=409, reason="Conflict", message="the object has been modified")
                if status_sub and request.subresource == "status":
                    for k in list(request.data):
                        if k != "status":
                            del request.data[k]
                elif status_sub:
                    request.data.pop("status", None)
                if "spec" in request.data and request.data["spec"] != cur.get("spec"):
                    request.data.setdefault("metadata", {})["generation"] = cur["metadata"].get("generation", 1) + 1
                (request.data.setdefault("metadata", {}) or {}).update(resourceVersion=rv)

        elif request.action == enums.action.DELETE and request.name:
            # Mark for deletion ourselves (kmock would do it too, but without a resourceVersion bump).
            key = (request.resource, request.namespace, request.name)
            cur = self._current(request)
            if cur is not None and cur["metadata"].get("finalizers") and not cur["metadata"].get("deletionTimestamp"):
                self.objects[key].patch({"metadata": {"deletionTimestamp": _now(), "resourceVersion": rv}})
                await self._buses[request.resource].put({"type": "MODIFIED", "object": self.objects[key].raw})

        mutating = request.action in (enums.action.CREATE, enums.action.UPDATE, enums.action.DELETE)
        if mutating and self.tripwires and self._tripped(self._write_of(request), before=True):
            raise InjectedFault(status=503, reason="Tripped", message="the sender was stopped before this write")
        response = await super()._handle(request)
        if request.action == enums.action.CREATE and response.status == 200 and not request.params.get("dryRun"):
            response.set_status(201)  # as the API server answers a create (clients check for it)
        if mutating and response.status < 300:
            write = self._write_of(request)
            if write.plural in self.keep_bodies and write.name:
                body = None
                key = (request.resource, write.namespace, write.name)
                if key in self.objects and not self.objects[key].deleted:  # kmock's ObjectsArray has no .get()
                    body = copy.deepcopy(self.objects[key].raw)
                write = dataclasses.replace(write, body=body)
            self.writes.append(write)
            if self.tripwires:
                self._tripped(write, before=False)
        if collect:  # ownerReferences cascade (kmock has no GC): only an object's removal can orphan others
            await self._collect_garbage()
        return response

    def _write_of(self, request) -> Write:
        data = request.data if isinstance(request.data, dict) else {}
        meta = data.get("metadata") or {}
        involved = (data.get("involvedObject") or {}).get("name") if request.resource.plural == "events" else None
        return Write(
            at=time.monotonic(),
            action=request.action.value,
            plural=request.resource.plural,
            subresource=request.subresource,
            namespace=request.namespace or meta.get("namespace"),
            name=request.name or meta.get("name"),
            involved=involved,
        )

    async def _collect_garbage(self) -> None:
        alive = {o.raw["metadata"].get("uid") for o in self.objects.values() if not o.deleted}
        for (res, _ns, _name), obj in list(self.objects.items()):
            if obj.deleted:
                continue
            refs = obj.raw["metadata"].get("ownerReferences") or []
            if refs and all(r.get("uid") not in alive for r in refs):
                raw = obj.raw
                obj.delete()
                await self._buses[res].put({"type": "DELETED", "object": raw})

    async def _serve_list(self, request):
        result = await super()._serve_list(request)
        sel = request.params.get("labelSelector")
        result["items"] = [o for o in result["items"] if match_labels(sel, o["metadata"].get("labels") or {})]
        result["metadata"]["resourceVersion"] = str(next(self._rv))
        # kubectl refuses lists without kind/apiVersion ("Object 'Kind' is missing").
        res = request.resource
        info = self.resources.get(res)
        kind = info.kind if info and info.kind else res.plural.capitalize()
        if _wants_table(request):
            return self._table(res, result["items"], result["metadata"]["resourceVersion"])
        return {"apiVersion": f"{res.group}/{res.version}".lstrip("/"), "kind": f"{kind}List", **result}

    async def _serve_version(self, request):
        # Subresources carry no short names or categories (kubectl warns that `sft` is ambiguous otherwise).
        result = await super()._serve_version(request)
        for entry in result["resources"]:
            if "/" in entry["name"]:
                entry["shortNames"], entry["categories"] = [], []
        return result

    async def _serve_fetch(self, request):
        obj = await super()._serve_fetch(request)
        if _wants_table(request):
            return self._table(request.resource, [obj], obj["metadata"].get("resourceVersion", ""))
        return obj

    def _table(self, resource, items: list, resource_version: str) -> dict:
        """A meta.k8s.io/v1 Table, as the API server prints a CRD's additionalPrinterColumns for kubectl."""
        # A CRD's declared columns, in order; without any, the server prints Name and Age.
        columns = self._columns.get(resource) or [
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp", "priority": 0}
        ]
        definitions = [{"name": "Name", "type": "string", "format": "name", "description": "Name", "priority": 0}] + [
            {
                "name": c["name"],
                "type": c["type"],
                "format": c.get("format", ""),
                "description": c.get("description", ""),
                "priority": c.get("priority", 0),
            }
            for c in columns
        ]
        rows = []
        for obj in items:
            cells = [obj["metadata"].get("name")]
            for column in columns:
                value = _json_path(obj, column["jsonPath"])
                if column["type"] == "date" and isinstance(value, str):
                    value = _age(value)
                cells.append(value)
            rows.append(
                {
                    "cells": cells,
                    "object": {
                        "kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": obj["metadata"],
                    },
                }
            )
        return {
            "kind": "Table",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": {"resourceVersion": resource_version},
            "columnDefinitions": definitions,
            "rows": rows,
        }

    async def _serve_watch(self, request):
        sel = request.params.get("labelSelector")
        async for ev in super()._serve_watch(request):
            if isinstance(ev, dict) and not match_labels(sel, ev["object"].get("metadata", {}).get("labels") or {}):
                continue
            yield ev


# ------------------------------------------------------------------------------------ pods, as the kubelet writes them
#
# The emulator serves Pods (`/api/v1/namespaces/NS/pods`, with a status subresource and label selectors); nothing in
# it schedules or runs them, so a test plays KubeRay (creating a RayJob's pods) and the scheduler and kubelet (writing
# their status). The shapes below are core/v1 PodStatus as the kubelet and kube-scheduler write them (Kubernetes
# 1.29-1.31: field names from k8s.io/api/core/v1 types.go; message formats from the scheduler's FitError, the
# kubelet's image puller "Back-off pulling image %q" and its "back-off %s restarting failed container=%s pod=%s"),
# with the names KubeRay gives a RayJob's pods (`<cluster>-head-<5>`, `<cluster>-<group>-worker-<5>`) and labels.

STARTED = "2026-05-01T11:58:00Z"


def ray_pod(
    name: str,
    namespace: str,
    labels: dict[str, str],
    *,
    container: str = "ray-worker",
    image: str = "ghcr.io/sftjob/sftjob-trainer:0.1.0",
    memory: str = "32Gi",
    node_type: str = "worker",
    cluster: str = "demo-a1-raycluster-x7k2p",
) -> dict[str, Any]:
    """A pod of a RayJob's cluster as KubeRay creates it (labels from the RayJob's pod template plus KubeRay's)."""
    resources = {"limits": {"cpu": "4", "memory": memory}, "requests": {"cpu": "4", "memory": memory}}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                **labels,
                "ray.io/cluster": cluster,
                "ray.io/node-type": node_type,
                "ray.io/group": "headgroup" if node_type == "head" else "workers",
                "ray.io/is-ray-node": "yes",
            },
        },
        "spec": {"containers": [{"name": container, "image": image, "resources": resources}]},
    }


def _pod_conditions(scheduled: bool, ready: bool, container: str) -> list[dict[str, Any]]:
    if not scheduled:
        return []
    unready = {"reason": "ContainersNotReady", "message": f"containers with unready status: [{container}]"}
    return [
        {"type": "PodReadyToStartContainers", "status": "True", "lastProbeTime": None, "lastTransitionTime": STARTED},
        {"type": "Initialized", "status": "True", "lastProbeTime": None, "lastTransitionTime": STARTED},
        {"type": "Ready", "status": str(ready), "lastProbeTime": None, "lastTransitionTime": STARTED}
        | ({} if ready else unready),
        {"type": "ContainersReady", "status": str(ready), "lastProbeTime": None, "lastTransitionTime": STARTED}
        | ({} if ready else unready),
        {"type": "PodScheduled", "status": "True", "lastProbeTime": None, "lastTransitionTime": STARTED},
    ]


def _running_status(container: str, image: str, state: dict, last: dict, restarts: int, ready: bool) -> dict:
    return {
        "phase": "Running" if "running" in state or restarts else "Pending",
        "conditions": _pod_conditions(True, ready, container),
        "hostIP": "10.0.3.17",
        "podIP": "10.244.2.31",
        "podIPs": [{"ip": "10.244.2.31"}],
        "startTime": STARTED,
        "qosClass": "Guaranteed",
        "containerStatuses": [
            {
                "name": container,
                "image": image,
                "imageID": "" if "waiting" in state and not restarts else f"{image.split(':')[0]}@sha256:" + "5e" * 32,
                "containerID": "containerd://" + "a1" * 32 if restarts or "running" in state else None,
                "ready": ready,
                "started": ready,
                "restartCount": restarts,
                "state": state,
                "lastState": last,
            }
        ],
    }


def unschedulable_status(message: str | None = None) -> dict[str, Any]:
    """A pod the scheduler cannot place (PodScheduled=False, reason Unschedulable, its FitError message)."""
    message = message or (
        "0/3 nodes are available: 1 node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }, "
        "2 Insufficient nvidia.com/gpu. preemption: 0/3 nodes are available: 1 Preemption is not helpful for "
        "scheduling, 2 No preemption victims found for incoming pod."
    )
    return {
        "phase": "Pending",
        "qosClass": "Guaranteed",
        "conditions": [
            {
                "type": "PodScheduled",
                "status": "False",
                "lastProbeTime": None,
                "lastTransitionTime": STARTED,
                "reason": "Unschedulable",
                "message": message,
            }
        ],
    }


def image_pull_status(container: str, image: str, *, backoff: bool = True) -> dict[str, Any]:
    """A container whose image cannot be pulled: ErrImagePull while pulling, ImagePullBackOff in between."""
    if backoff:
        waiting = {"reason": "ImagePullBackOff", "message": f'Back-off pulling image "{image}"'}
    else:
        waiting = {
            "reason": "ErrImagePull",
            "message": (
                f'rpc error: code = NotFound desc = failed to pull and unpack image "{image}": failed to resolve '
                f'reference "{image}": {image}: not found'
            ),
        }
    return _running_status(container, image, {"waiting": waiting}, {}, 0, False)


def crash_loop_status(
    container: str, image: str, pod: str, *, exit_code: int = 1, reason: str = "Error", restarts: int = 4
) -> dict[str, Any]:
    """A container that keeps exiting: waiting in CrashLoopBackOff, the last exit in lastState.terminated."""
    waiting = {
        "reason": "CrashLoopBackOff",
        "message": f"back-off {10 * 2**restarts}s restarting failed container={container} pod={pod}_ml(9d1c)",
    }
    last = {
        "terminated": {
            "exitCode": exit_code,
            "reason": reason,
            "startedAt": STARTED,
            "finishedAt": "2026-05-01T11:59:41Z",
            "containerID": "containerd://" + "b2" * 32,
        }
    }
    return _running_status(container, image, {"waiting": waiting}, last, restarts, False)


def oom_restarted_status(container: str, image: str) -> dict[str, Any]:
    """A container running again after the kernel killed its previous run for exceeding the memory limit."""
    state = {"running": {"startedAt": "2026-05-01T11:59:50Z"}}
    last = {
        "terminated": {
            "exitCode": 137,
            "reason": "OOMKilled",
            "startedAt": STARTED,
            "finishedAt": "2026-05-01T11:59:44Z",
            "containerID": "containerd://" + "c3" * 32,
        }
    }
    return _running_status(container, image, state, last, 1, True)


def config_error_status(container: str, image: str, secret: str) -> dict[str, Any]:
    """A container the kubelet cannot create because a Secret it references is missing."""
    waiting = {"reason": "CreateContainerConfigError", "message": f'secret "{secret}" not found'}
    return _running_status(container, image, {"waiting": waiting}, {}, 0, False)


def healthy_status(container: str, image: str) -> dict[str, Any]:
    """A container that runs and is ready."""
    return _running_status(container, image, {"running": {"startedAt": STARTED}}, {}, 0, True)
