"""The operator's test bench: the realistic KMock emulator fed the real CRDs, a kubeconfig, the
operator running in the caller's event loop, and a small Kubernetes client for the test side.

Used by tests/operator/ (through fixtures in its conftest.py) and by bench/operator_bench.py.
Everything runs in one event loop, so the synchronous kubernetes client is always called through
`asyncio.to_thread` (a blocking call would stall the loop that serves the emulator).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import kmock
import yaml

from sftjob_api.kuberay import RAYJOB_GROUP, RAYJOB_PLURAL, RAYJOB_VERSION
from sftjob_api.types import GROUP, PLURAL, VERSION
from support.kmock_realistic import RealisticEmulator

REPO = Path(__file__).resolve().parents[2]
SFTJOB_CRD = REPO / "crds" / "sftjob.yaml"
# KubeRay's RayJob CRD, vendored (tests/support/schemas/README.md says where it comes from).
RAYJOB_CRD = Path(__file__).parent / "schemas" / "kuberay-v1.7.0" / "ray.io_rayjobs.yaml"
VERBS = ["create", "delete", "get", "list", "patch", "update", "watch", "deletecollection"]

T = TypeVar("T")


@functools.cache
def load_crd(path: Path) -> dict[str, Any]:
    """A CRD manifest, parsed once per process (the RayJob CRD is 25,000 lines: use libyaml)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd: dict[str, Any] = yaml.load(path.read_text(), Loader=loader)  # noqa: S506  (a safe loader)
    return crd


def configure_emulator(emulator: RealisticEmulator) -> None:
    """Declare the built-in resources, the SFTJob CRD (crds/sftjob.yaml) and KubeRay's RayJob CRD (schema-checked)."""
    emulator.resources.load_bundled()
    emulator.resources["v1/events"] = kmock.ResourceInfo(kind="Event", singular="event", namespaced=True, verbs=VERBS)
    emulator.register_crd(load_crd(SFTJOB_CRD))
    emulator.register_crd(load_crd(RAYJOB_CRD))


def write_kubeconfig(url: str, path: Path) -> Path:
    """A kubeconfig for the kubernetes client and kubectl, pointing at the emulator."""
    path.write_text(
        f"""apiVersion: v1
kind: Config
clusters: [{{name: kmock, cluster: {{server: "{url}"}}}}]
users: [{{name: u, user: {{token: dummy}}}}]
contexts: [{{name: kmock, context: {{cluster: kmock, user: u, namespace: default}}}}]
current-context: kmock
"""
    )
    return path


def use_kubeconfig(path: Path, setenv: Callable[[str, str], Any], setattr_: Callable[[Any, str, Any], Any]) -> None:
    """Point the kubernetes client (and Kopf's login through it) at `path`; it read KUBECONFIG at import."""
    import kubernetes

    setenv("KUBECONFIG", str(path))
    setattr_(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(path))


class Api:
    """Test-side Kubernetes calls (what kubectl or KubeRay would do), run in threads."""

    def __init__(self, kubeconfig: Path) -> None:
        import kubernetes

        client = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
        client.configuration.connection_pool_maxsize = 32
        self.custom = kubernetes.client.CustomObjectsApi(client)
        self.core = kubernetes.client.CoreV1Api(client)

    async def create_sftjob(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create an SFTJob (namespace from its metadata)."""
        namespace = body["metadata"].get("namespace", "default")
        return await asyncio.to_thread(
            self.custom.create_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, body
        )

    async def get_sftjob(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The SFTJob or None."""
        return await self._get(GROUP, VERSION, namespace, PLURAL, name)

    async def patch_sftjob(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """Merge-patch an SFTJob (as `kubectl patch --type=merge` does)."""
        return await asyncio.to_thread(
            self.custom.patch_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name, patch
        )

    async def delete_sftjob(self, namespace: str, name: str) -> None:
        """Delete an SFTJob (returns at once, like `kubectl delete --wait=false`)."""
        await asyncio.to_thread(
            self.custom.delete_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name
        )

    async def get_rayjob(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The RayJob or None."""
        return await self._get(RAYJOB_GROUP, RAYJOB_VERSION, namespace, RAYJOB_PLURAL, name)

    async def list_rayjobs(self, namespace: str, selector: str | None = None) -> list[dict[str, Any]]:
        """RayJobs of a namespace, optionally by label selector."""
        result = await asyncio.to_thread(
            self.custom.list_namespaced_custom_object,
            RAYJOB_GROUP,
            RAYJOB_VERSION,
            namespace,
            RAYJOB_PLURAL,
            label_selector=selector,
        )
        return list(result["items"])

    async def delete_rayjob(self, namespace: str, name: str) -> None:
        """Delete a RayJob, as `kubectl delete rayjob NAME --wait=false` does."""
        await asyncio.to_thread(
            self.custom.delete_namespaced_custom_object, RAYJOB_GROUP, RAYJOB_VERSION, namespace, RAYJOB_PLURAL, name
        )

    async def create_namespace(self, name: str) -> None:
        """Create a Namespace."""
        body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
        await asyncio.to_thread(self.core.create_namespace, body)

    async def play_kuberay(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        """Patch a RayJob's status the way KubeRay would."""
        await asyncio.to_thread(
            self.custom.patch_namespaced_custom_object_status,
            RAYJOB_GROUP,
            RAYJOB_VERSION,
            namespace,
            RAYJOB_PLURAL,
            name,
            {"status": status},
        )

    async def create_secret(self, namespace: str, name: str, data: dict[str, str]) -> None:
        """Create an Opaque Secret from plain strings."""
        encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace},
            "data": encoded,
        }
        await asyncio.to_thread(self.core.create_namespaced_secret, namespace, body)

    async def events(self, namespace: str) -> list[dict[str, Any]]:
        """Events of a namespace as plain dicts."""
        result = await asyncio.to_thread(self.core.list_namespaced_event, namespace)
        return [self.core.api_client.sanitize_for_serialization(e) for e in result.items]

    async def _get(self, group: str, version: str, namespace: str, plural: str, name: str) -> dict[str, Any] | None:
        from kubernetes.client.rest import ApiException

        try:
            return await asyncio.to_thread(
                self.custom.get_namespaced_custom_object, group, version, namespace, plural, name
            )
        except ApiException as err:
            if err.status == 404:
                return None
            raise


async def wait_for(
    probe: Callable[[], Awaitable[T]], *, timeout: float = 10.0, interval: float = 0.05, what: str = "condition"
) -> T:
    """Poll `probe` until it returns something truthy; fail with the last value after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = await probe()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")
        await asyncio.sleep(interval)


@dataclass
class OperatorRun:
    """One operator running in the current event loop."""

    task: asyncio.Task[None]
    stop_flag: asyncio.Event
    services: list[Any] = field(default_factory=list)

    @property
    def service(self) -> Any:
        """The service layer (built by the operator's startup handler)."""
        return self.services[-1]

    async def stop(self) -> None:
        """Stop the operator and wait for it to finish."""
        self.stop_flag.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self.task, timeout=15)


@contextlib.asynccontextmanager
async def run_operator(settings: Any, *, namespaces: tuple[str, ...] = ()) -> AsyncIterator[OperatorRun]:
    """Run the operator (all namespaces unless `namespaces`) until the block ends."""
    import kopf

    from sftjob_operator.handlers import default_service, register

    run = OperatorRun(task=None, stop_flag=asyncio.Event())  # type: ignore[arg-type]

    def make_service(operator_settings: Any) -> Any:
        service = default_service(operator_settings)
        run.services.append(service)
        return service

    registry = kopf.OperatorRegistry()
    register(registry, settings, make_service)
    ready = asyncio.Event()
    run.task = asyncio.create_task(
        kopf.operator(
            registry=registry,
            standalone=True,
            clusterwide=not namespaces,
            namespaces=namespaces,
            stop_flag=run.stop_flag,
            ready_flag=ready,
        )
    )
    try:
        await asyncio.wait_for(ready.wait(), timeout=15)
        yield run
    finally:
        await run.stop()


class EmulatorThread:
    """The emulator served from its own thread and event loop, like an API server in another process.

    Kopf, when it stops, waits up to 5 s for every task created in its loop since it started;
    the emulator's request handlers would be among them if both shared a loop.
    """

    def __init__(self) -> None:
        self.emulator: RealisticEmulator | None = None
        self.errors: list[Exception] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="kmock-emulator", daemon=True)

    def __enter__(self) -> RealisticEmulator:
        self._thread.start()
        if not self._ready.wait(timeout=30) or self.emulator is None:
            raise RuntimeError(f"the emulator did not start: {self._failure!r}")
        return self.emulator

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as err:  # reported by __enter__
            self._failure = err
            self._ready.set()
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with RealisticEmulator() as emulator, kmock.Server(emulator):
            configure_emulator(emulator)
            self.emulator = emulator
            self._ready.set()
            await self._stop.wait()
            self.errors = list(emulator.errors)
            emulator.errors.clear()  # reported by the caller, not raised on exit


# --------------------------------------------------------------------------- jobs and trainer output


def make_sftjob(
    name: str, namespace: str = "ml", *, output_uri: str = "/tmp/sftjob-out", **spec: Any
) -> dict[str, Any]:
    """A small valid SFTJob; keyword arguments replace top-level spec sections."""
    body: dict[str, Any] = {
        "apiVersion": "sftjob.dev/v1alpha1",
        "kind": "SFTJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "model": {"source": "hf://org/tiny-model"},
            "dataset": {"train": {"uri": "s3://datasets/train.jsonl"}},
            "output": {"uri": output_uri},
            **spec,
        },
    }
    return body


def progress_document(
    phase: str = "Running",
    *,
    attempt: int = 1,
    step: int = 0,
    total: int = 100,
    loss: float | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A progress.json as the trainer writes it (camelCase)."""
    document: dict[str, Any] = {
        "phase": phase,
        "attempt": attempt,
        "step": step,
        "totalSteps": total,
        "epoch": step / total if total else 0.0,
        "percentage": 100.0 * step / total if total else 0.0,
        "updatedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "metrics": {"trainLoss": loss} if loss is not None else {},
    }
    document.update(extra)
    return document


class OutputWriter:
    """Writes what the trainer would write under a job's output directory (local path or S3)."""

    def __init__(self, job_output: str, s3_client: Any = None) -> None:
        self.base = job_output.rstrip("/")
        self.s3 = s3_client

    def write(self, name: str, content: dict[str, Any] | str) -> None:
        """Write (atomically replace) one file."""
        data = content if isinstance(content, str) else json.dumps(content)
        if self.base.startswith("s3://"):
            bucket, _, prefix = self.base[len("s3://") :].partition("/")
            self.s3.put_object(Bucket=bucket, Key=f"{prefix}/{name}", Body=data.encode())
        else:
            path = Path(self.base) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(data)
            tmp.replace(path)

    async def progress(self, **kwargs: Any) -> None:
        """Write progress.json (see `progress_document`)."""
        await asyncio.to_thread(self.write, "progress.json", progress_document(**kwargs))

    async def manifest(self) -> None:
        """Write manifest.json: the output is complete."""
        await asyncio.to_thread(self.write, "manifest.json", {"files": {}})


# --------------------------------------------------------------------------- operators outside the test's loop


class OperatorThread:
    """The operator in a thread with its own event loop, as in another process but sharing the test's logging.

    Stopping it costs no more than Kopf's own shutdown: Kopf, when it stops, waits for every task
    created in its loop, and here that loop holds only the operator's tasks (never a test fixture's).
    """

    def __init__(self, settings: Any, *, namespaces: tuple[str, ...] = ()) -> None:
        self.settings = settings
        self.namespaces = namespaces
        self.services: list[Any] = []
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="sftjob-operator", daemon=True)

    @property
    def service(self) -> Any:
        """The service layer (built by the operator's startup handler)."""
        return self.services[-1]

    def start(self) -> OperatorThread:
        """Start the operator and wait until Kopf reports it ready."""
        self._thread.start()
        while not self._ready.wait(timeout=0.05):
            if not self._thread.is_alive():
                raise RuntimeError(f"the operator stopped at start-up: {self._failure!r}")
        return self

    def stop(self) -> None:
        """Ask Kopf to stop and wait for the thread; re-raise what made the operator fail, if anything."""
        self._stop.set()
        self._thread.join(timeout=30)
        if self._thread.is_alive():
            raise RuntimeError("the operator did not stop within 30 s")
        if self._failure is not None:
            raise RuntimeError("the operator failed") from self._failure

    def _run(self) -> None:
        import kopf

        from sftjob_operator.handlers import default_service, register

        def make_service(operator_settings: Any) -> Any:
            service = default_service(operator_settings)
            self.services.append(service)
            return service

        registry = kopf.OperatorRegistry()
        register(registry, self.settings, make_service)
        try:
            asyncio.run(
                kopf.operator(
                    registry=registry,
                    standalone=True,
                    clusterwide=not self.namespaces,
                    namespaces=self.namespaces,
                    stop_flag=self._stop,
                    ready_flag=self._ready,
                )
            )
        except BaseException as err:  # reported by start() or stop()
            self._failure = err


# A zygote imports the operator once, then forks one child per line on stdin (the line holds the
# child's arguments) and answers its pid: each child runs `python -m sftjob_operator`'s main() in a
# process of its own, started in milliseconds instead of the ~1.5 s of CPU the imports cost.
_ZYGOTE = """
import os, signal, sys
import boto3, kopf, kubernetes, pydantic  # noqa: F401  (the heavy imports, once)
import sftjob_operator.handlers, sftjob_operator.kube  # noqa: F401
from sftjob_operator.__main__ import main
signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the children
for line in sys.stdin:
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.dup2(2, 1)  # the child's output goes to the log, not to the pid pipe
        os._exit(main(line.split()))
    print(pid, flush=True)
"""


class OperatorProcess:
    """`python -m sftjob_operator` in a child process pointed at the emulator: a real process to SIGKILL.

    The environment is the one the Helm chart sets (SFTJOB_* variables) plus KUBECONFIG; the
    liveness endpoint takes a free port. Output goes to `log` (appended across restarts). With
    `zygote`, each process is forked from a process that imported the operator once (see `_ZYGOTE`),
    so that restarting after a kill costs the operator's own recovery, not Python's imports.
    """

    def __init__(self, kubeconfig: Path, log: Path, *, zygote: bool = False, **env: str) -> None:
        self.kubeconfig = kubeconfig
        self.log = log
        self.env = env
        self.starts = 0
        self._zygote: Any = None
        self._popen: Any = None
        self._process: Any = None  # psutil.Process of the running operator
        if zygote:
            self._zygote = self._spawn([sys.executable, "-c", _ZYGOTE], stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def _spawn(self, command: list[str], **pipes: Any) -> Any:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "SFTJOB_METRICS_PORT": "0", **self.env}
        with self.log.open("ab") as log:
            pipes.setdefault("stdout", log)
            return subprocess.Popen(command, env=env, stderr=log, **pipes)

    def start(self) -> OperatorProcess:
        """Start a new operator process (the previous one must have ended)."""
        import psutil

        if self.running:
            raise RuntimeError("the previous operator process is still running")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        args = ["--liveness", f"http://127.0.0.1:{port}/healthz"]
        if self._zygote is not None:
            self._zygote.stdin.write((" ".join(args) + "\n").encode())
            self._zygote.stdin.flush()
            pid = int(self._zygote.stdout.readline())
        else:
            self._popen = self._spawn([sys.executable, "-m", "sftjob_operator", *args])
            pid = self._popen.pid
        self._process = psutil.Process(pid)
        self.starts += 1
        return self

    @property
    def pid(self) -> int:
        """The running process's id."""
        return int(self._process.pid)

    @property
    def running(self) -> bool:
        """Whether an operator process is running."""
        import psutil

        if self._process is None:
            return False
        try:
            return bool(self._process.is_running() and self._process.status() != psutil.STATUS_ZOMBIE)
        except psutil.NoSuchProcess:
            return False

    def kill(self) -> None:
        """SIGKILL the running process (no cleanup of any kind runs) and wait until it is gone."""
        self._end(signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM (Kopf's graceful stop) the running process, SIGKILL it after 15 s; end the zygote."""
        self._end(signal.SIGTERM)
        if self._zygote is not None:
            self._zygote.kill()
            self._zygote.wait()
            self._zygote = None

    def _end(self, signum: int) -> None:
        import psutil

        if not self.running:
            return
        try:
            self._process.send_signal(signum)
            if self._popen is not None:
                self._popen.wait(timeout=15)
            else:
                self._process.wait(timeout=15)
        except (psutil.TimeoutExpired, subprocess.TimeoutExpired):
            self._process.kill()
            self._process.wait(timeout=15)
        except psutil.NoSuchProcess:
            pass
