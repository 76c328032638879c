"""Trainer faults: a worker killed mid-step, and an object store that stops answering during uploads.

The storage faults are real outages, not mocks: the trainer talks to the suite's moto S3 server through
`FlakyProxy`, a TCP proxy on loopback that, once it sees a request for a chosen key go by, resets that
connection and every new one for a number of connections (or for good). Every job runs as
`python -m sftjob_trainer` on the suite's Ray cluster, with its Ray job's runtime environment (the AWS
variables pointing at the proxy) passed the way `ray job submit` and KubeRay pass it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sftjob_api.layout import MANIFEST_FILE, PROGRESS_FILE
from sftjob_api.progress import ProgressFile
from sftjob_trainer import object_store
from sftjob_trainer.demo import write_copy_task
from sftjob_trainer.faults import KILL_WORKER_AT_STEP_ENV

AREA = "Trainer faults"
pytestmark = pytest.mark.slow

BUCKET = "sft-faults"
# Rows of the copy task: 4 optimizer steps of global batch 8 need 32; a few more keep the last batch full.
TRAIN_ROWS = 40
VALIDATION_ROWS = 4
# The suite's shrunken storage backoff: the same tries as production, sleeps 50x shorter (the counts are asserted).
BACKOFF_SCALE = "0.02"
# Seconds a faulted job may run before the test gives up on it (a hang is a failure, not a wait).
JOB_TIMEOUT_S = 300
# Connections one storage operation makes before it gives up: tries x HTTP attempts per try.
CONNECTIONS_PER_OPERATION = (len(object_store.RETRY_DELAYS_S) + 1) * object_store.REQUEST_ATTEMPTS


class FlakyProxy:
    """A TCP proxy on 127.0.0.1 in front of an HTTP server, which can stop answering.

    `arm(pattern, drop)` waits for a client to send `pattern` (e.g. the request line of a PUT below a prefix).
    That request is lost: its connection is reset before the request reaches the server, or with
    `after_server=True` once the server has done it but before its answer reaches the client (the client
    cannot tell it happened). Then every other open connection is cut, and the next `drop` new connections
    are reset once their first request is read (`drop=None`: all of them, for good); `only` limits that to
    connections whose first request holds it. `outage(drop, hang=True)` instead accepts connections and never
    answers, as a wedged server does. Resets (RST) are what a client sees from a crashed or restarting server.
    """

    def __init__(self, upstream_port: int) -> None:
        """Listen on a free loopback port in front of `127.0.0.1:upstream_port`."""
        self.upstream = ("127.0.0.1", upstream_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.lock = threading.Lock()
        self.pattern: bytes | None = None
        self.skip = 0
        self.only: bytes | None = None
        self.after_server = False
        self.to_drop: int | None = 0
        self.hang = False
        self.dropped = 0
        """Requests or connections lost to the outage (the tripping request included)."""
        self.triggered = threading.Event()
        self.open: set[socket.socket] = set()
        self.poisoned: set[socket.socket] = set()
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, pattern: bytes, drop: int | None, after_server: bool = False, skip: int = 0,
            only: bytes | None = None) -> None:
        """Start an outage when a client sends `pattern` (after `skip` times), lasting `drop` more connections.

        With `only`, the outage takes only connections whose first request holds `only` (one key's uploads),
        so the count a test asserts is that client's alone.
        """
        with self.lock:
            self.pattern, self.after_server, self.to_drop, self.hang = pattern, after_server, drop, False
            self.skip, self.only = skip, only
            self.dropped = 0
            self.triggered.clear()

    def outage(self, drop: int | None, hang: bool = False) -> None:
        """Stop answering now, for `drop` new connections (None: for good)."""
        with self.lock:
            self.pattern, self.to_drop, self.hang, self.dropped, self.only = None, drop, hang, 0, None
            self.triggered.set()

    def heal(self) -> None:
        """Answer every connection again."""
        with self.lock:
            self.pattern, self.to_drop, self.hang = None, 0, False
            self.triggered.clear()
            held, self.held = self.held, []
        for sock in held:
            sock.close()

    def close(self) -> None:
        """Stop listening and cut every connection."""
        self.listener.close()
        self.heal()
        self._cut_all()

    @staticmethod
    def _reset(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with RST
        sock.close()

    def _cut_all(self, keep: tuple[socket.socket, ...] = ()) -> None:
        with self.lock:
            victims = [sock for sock in self.open if sock not in keep]
            self.open -= set(victims)
        for sock in victims:
            self._reset(sock)

    def _down(self, first: bytes | None) -> bool:
        """Whether the outage takes a new connection (and counts it); call with the lock held.

        Args:
            first: The connection's first bytes (None: not read yet, for `hang`).
        """
        if not self.triggered.is_set() or self.to_drop == 0:
            return False
        if self.only is not None and (first is None or self.only not in first):
            return False
        if self.to_drop is not None:
            self.to_drop -= 1
        self.dropped += 1
        return True

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                held = self.hang and self._down(None)
                if held:
                    self.held.append(client)  # accepted, never answered: the client's read timeout ends it
            if not held:
                threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        """Read a new connection's first request, then reset it (outage) or relay it to the server."""
        try:
            first = client.recv(65536)
        except OSError:
            first = b""
        with self.lock:
            down = bool(first) and self._down(first)
        if not first or down:
            self._reset(client)
            return
        try:
            server = socket.create_connection(self.upstream)
        except OSError:
            self._reset(client)
            return
        with self.lock:
            self.open |= {client, server}
        threading.Thread(target=self._pump, args=(server, client, client, b""), daemon=True).start()
        self._pump(client, server, client, first)

    def _pump(self, source: socket.socket, sink: socket.socket, client: socket.socket, first: bytes) -> None:
        tail = b""
        try:
            chunk = first or source.recv(65536)
            while chunk:
                if source is client:
                    trip = self._trips(tail + chunk)
                    if trip == "before":
                        self._cut_all()
                        self._reset(client)
                        return
                    if trip == "after":
                        with self.lock:
                            self.poisoned.add(client)
                        self._cut_all(keep=(client, sink))
                    tail = chunk[-256:]  # longer than any pattern: a pattern split across two reads is still seen
                elif client in self.poisoned:
                    interim, final = _split_interim(chunk)
                    if not final:
                        # "100 Continue" is not the answer: the client sends its body only after it.
                        sink.sendall(interim)
                        chunk = source.recv(65536)
                        continue
                    self._reset(client)  # the server did it; the client never hears so
                    return
                sink.sendall(chunk)
                chunk = source.recv(65536)
        except OSError:
            pass
        finally:
            with self.lock:
                self.open -= {source, sink}
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def _trips(self, data: bytes) -> str | None:
        with self.lock:
            if self.pattern is None or self.pattern not in data:
                return None
            if self.skip:
                self.skip -= 1
                return None
            self.pattern = None
            self.dropped += 1
            self.triggered.set()
            return "after" if self.after_server else "before"


def _split_interim(chunk: bytes) -> tuple[bytes, bytes]:
    """An answer's leading interim (1xx) responses, and what follows them."""
    interim = b""
    while chunk.startswith(b"HTTP/1.1 1") and b"\r\n\r\n" in chunk:
        head, chunk = chunk.split(b"\r\n\r\n", 1)
        interim += head + b"\r\n\r\n"
    return interim, chunk


@pytest.fixture(scope="module")
def proxy(s3_server: Any) -> Iterator[FlakyProxy]:
    """The flaky proxy in front of the suite's moto server (healthy between tests)."""
    flaky = FlakyProxy(int(s3_server.endpoint.rsplit(":", 1)[1]))
    yield flaky
    flaky.close()


@pytest.fixture(autouse=True)
def _healthy(proxy: FlakyProxy) -> Iterator[None]:
    proxy.heal()
    yield
    proxy.heal()


@pytest.fixture(scope="module")
def copy_task(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train.jsonl and validation.jsonl of the demo's copy task (local files: only the output is on S3)."""
    return write_copy_task(tmp_path_factory.mktemp("faults-data"), TRAIN_ROWS, VALIDATION_ROWS, seed=5)


def job_document(name: str, model: Path, data: Path, output: str, **spec: Any) -> dict[str, Any]:
    """A small LoRA SFTJob over the copy task; `spec` replaces whole sections."""
    body: dict[str, Any] = {
        "model": {"source": str(model)},
        "dataset": {"train": {"uri": str(data / "train.jsonl")}, "validation": {"uri": str(data / "validation.jsonl")},
                    "schema": "prompt_completion"},
        "method": {"type": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0}},
        "hyperparameters": {"maxSteps": 4, "batchSize": 8, "learningRate": 1e-2, "logInterval": 1, "seed": 1},
        "compute": {"numWorkers": 1, "gpusPerWorker": 0, "cpusPerWorker": 1},
        "checkpointing": {"interval": 2, "keep": 3},
        "evaluation": {"numSamples": 2, "maxNewTokens": 4},
        "output": {"uri": output},
        "runPolicy": {"backoffLimit": 0},
        **spec,
    }
    return {"apiVersion": "sftjob.dev/v1alpha1", "kind": "SFTJob", "metadata": {"name": name}, "spec": body}


def run_trainer(doc: dict[str, Any], s3_env: dict[str, str], **extra: str) -> subprocess.CompletedProcess[str]:
    """`python -m sftjob_trainer` on the suite's Ray cluster; its Ray job (the workers) gets `s3_env` too."""
    import ray

    job_env = {**s3_env, object_store.BACKOFF_SCALE_ENV: BACKOFF_SCALE, "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}
    env = {
        **os.environ, **job_env, **extra,
        "SFTJOB_CONFIG": json.dumps(doc),
        "SFTJOB_PROGRESS_INTERVAL": "0",
        "RAY_ADDRESS": ray.get_runtime_context().gcs_address,
        # How `ray job submit` (and so KubeRay) hands the entrypoint its job's runtime environment.
        "RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps({"runtime_env": {"env_vars": job_env}}),
    }
    return subprocess.run([sys.executable, "-m", "sftjob_trainer"], env=env, capture_output=True, text=True,
                          timeout=JOB_TIMEOUT_S, check=False)


def through(proxy: FlakyProxy, s3_server: Any) -> dict[str, str]:
    """The AWS environment with the endpoint replaced by the proxy's."""
    return {**s3_server.env, "AWS_ENDPOINT_URL": proxy.endpoint}


def fetch(s3_server: Any, uri: str, local: Path) -> Path:
    """Download an output straight from the server (not through the proxy)."""
    loc = object_store.parse_s3(uri)
    client = s3_server.client()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=loc.bucket, Prefix=loc.key + "/"):
        for obj in page.get("Contents", []):
            if obj["Key"].endswith("/"):
                continue
            target = local / obj["Key"][len(loc.key) + 1 :]
            target.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(loc.bucket, obj["Key"], str(target))
    return local


def assert_complete(out: Path) -> dict[str, Any]:
    """The manifest exists and lists files that exist with its sha256 and size; returns it."""
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert {"adapter/adapter_model.safetensors", "adapter/adapter_config.json", "eval_samples.jsonl", "loss.png",
            "README.md", "metrics.jsonl"} <= set(manifest["files"])
    for name, entry in manifest["files"].items():
        data = (out / name).read_bytes()
        assert (hashlib.sha256(data).hexdigest(), len(data)) == (entry["sha256"], entry["size"]), name
    return manifest


def assert_adapter_reloads(out: Path, model_dir: Path) -> None:
    """The adapter loads onto the base with PEFT, holds trained (non-zero) LoRA B weights and generates."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tuned = PeftModel.from_pretrained(base, out / "adapter")
    lora_b = [p for n, p in tuned.named_parameters() if "lora_B" in n]
    assert lora_b and all(float(p.abs().sum()) > 0 for p in lora_b)
    tokenizer = AutoTokenizer.from_pretrained(out / "adapter")
    ids = tokenizer("Repeat after me: red cat two", return_tensors="pt").input_ids
    generated = tuned.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, min_new_tokens=3,
                               do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert generated.shape[1] == ids.shape[1] + 3


def progress_of(out: Path) -> ProgressFile:
    """progress.json of a downloaded or local output."""
    return ProgressFile.model_validate_json((out / PROGRESS_FILE).read_text())


def loss_steps(out: Path) -> list[int]:
    """The steps of the training-loss records in metrics.jsonl."""
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r["step"] for r in map(json.loads, lines) if "loss" in r]


# ------------------------------------------------------------------------------ a worker killed mid-step

KILL_SCENARIO = ("worker (rank 1 of 2) SIGKILLed mid-step: Ray Train restarts the worker group, training resumes from "
                 "the last checkpoint and finishes")
# Step 3 runs after checkpoint 2 and before checkpoint 4: the restarted workers must redo step 3.
KILL_AT_STEP = 3
KILL_STEPS = 6


@pytest.fixture(scope="module")
def killed_worker_run(ray_cluster: None, s3_server: Any, tiny_model_dir: Path, copy_task: Path,
                      tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 2-worker run whose rank 1 SIGKILLs itself in the middle of step 3 (after backward, before the update)."""
    root = tmp_path_factory.mktemp("killed-worker")
    doc = job_document("killed-worker", tiny_model_dir, copy_task, str(root),
                       compute={"numWorkers": 2, "gpusPerWorker": 0, "cpusPerWorker": 1},
                       hyperparameters={"maxSteps": KILL_STEPS, "batchSize": 8, "learningRate": 1e-2,
                                        "logInterval": 1, "seed": 1},
                       runPolicy={"backoffLimit": 2})
    proc = run_trainer(doc, s3_server.env, **{KILL_WORKER_AT_STEP_ENV: str(KILL_AT_STEP)})
    out = root / "killed-worker"
    return {"proc": proc, "out": out, "progress": progress_of(out) if (out / PROGRESS_FILE).exists() else None}


@pytest.mark.scenario(AREA, KILL_SCENARIO)
def test_worker_killed_mid_step_resumes_from_last_checkpoint(killed_worker_run: dict[str, Any], tiny_model_dir: Path,
                                                             figures: dict[str, str]) -> None:
    proc, out, progress = killed_worker_run["proc"], killed_worker_run["out"], killed_worker_run["progress"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    # The driver started the workers again itself, once: a lost worker is retryable (runPolicy.backoffLimit 2).
    assert proc.stderr.count("restarting them from the latest checkpoint") == 1, proc.stderr[-3000:]
    assert "restarting them from the latest checkpoint (1 of 2)" in proc.stderr
    figures[f"worker killed mid-step {KILL_AT_STEP} of {KILL_STEPS}: training resumed from step"] = \
        str(progress.resumed_from_step)
    assert progress.phase == "Succeeded" and progress.step == KILL_STEPS and progress.error is None
    assert progress.resumed_from_step == 2  # the last checkpoint before the kill, not 0
    assert loss_steps(out) == [1, 2, 3, 4, 5, 6]  # nothing missing, step 3 of the dead group not duplicated
    manifest = assert_complete(out)
    assert manifest["steps"] == KILL_STEPS
    assert_adapter_reloads(out, tiny_model_dir)


@pytest.mark.scenario(AREA, KILL_SCENARIO)
def test_worker_killed_progress_keeps_checkpoint_steps(killed_worker_run: dict[str, Any]) -> None:
    assert killed_worker_run["progress"] is not None
    assert [c.step for c in killed_worker_run["progress"].checkpoints] == [2, 4, 6]


@pytest.mark.scenario(AREA, KILL_SCENARIO)
def test_worker_killed_progress_keeps_trained_tokens(killed_worker_run: dict[str, Any]) -> None:
    progress = killed_worker_run["progress"]
    assert progress is not None and progress.dataset is not None
    # 6 steps x 8 examples cover all 40 training examples at least once.
    assert progress.trained_tokens >= progress.dataset.trainable_tokens


# ------------------------------------------------------------------------------ the object store stops answering

BOUNDED = "object store refuses or hangs every connection: each storage call gives up after its bounded tries"
ARTIFACT_BLIP = ("object store stops answering during artifact upload, for less than the retry budget: retried with "
                 "backoff, the run Succeeds, every manifest sha256 matches")
ARTIFACT_OUTAGE = ("object store stops answering during artifact upload, for longer than the retry budget: the run "
                   "fails cleanly (Failed/StorageUnavailable, retryable), manifest.json is never written")
CHECKPOINT_OUTAGE = ("object store stops answering for good during a checkpoint upload: the attempt exits non-zero "
                     "without manifest.json, Ray registered only complete checkpoints, the next attempt resumes "
                     "and finishes")


@pytest.fixture
def through_proxy(proxy: FlakyProxy, s3_server: Any, monkeypatch: pytest.MonkeyPatch) -> FlakyProxy:
    """This process's boto3 pointed at the proxy, with the suite's short backoff."""
    for key, value in through(proxy, s3_server).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv(object_store.BACKOFF_SCALE_ENV, BACKOFF_SCALE)
    s3_server.create_bucket(BUCKET)
    return proxy


@pytest.mark.scenario(AREA, BOUNDED)
@pytest.mark.parametrize("hang", [False, True], ids=["refused", "hung"])
def test_storage_call_gives_up_after_its_tries(through_proxy: FlakyProxy, monkeypatch: pytest.MonkeyPatch,
                                               hang: bool, figures: dict[str, str]) -> None:
    # The read timeout is what ends a try against a hung endpoint; shrunk here, it is the one number that changes.
    monkeypatch.setattr(object_store, "READ_TIMEOUT_S", 0.3)
    through_proxy.outage(drop=None, hang=hang)
    with pytest.raises(object_store.StorageError) as caught:
        object_store.read_bytes(f"s3://{BUCKET}/bounded/file.txt")  # a GET: no 100-continue wait before the timeout
    assert caught.value.code == "StorageUnavailable" and caught.value.retryable
    assert through_proxy.dropped == CONNECTIONS_PER_OPERATION  # tried exactly the budget, then stopped
    budget = object_store.retry_budget()
    figures["storage retry budget per call (tries x HTTP attempts)"] = \
        f"{budget['tries']:.0f} x {budget['request_attempts']:.0f}"
    figures["storage outage always ridden out / most time before giving up (hung endpoint)"] = \
        f"{budget['outage_ridden_s']:.1f} s / {budget['max_s']:.0f} s"


@pytest.mark.scenario(AREA, BOUNDED)
def test_storage_call_rides_out_an_outage_within_its_tries(through_proxy: FlakyProxy) -> None:
    through_proxy.outage(drop=CONNECTIONS_PER_OPERATION - 1)
    object_store.write_bytes(f"s3://{BUCKET}/bounded/late.txt", b"made it")
    assert through_proxy.dropped == CONNECTIONS_PER_OPERATION - 1
    through_proxy.heal()
    assert object_store.read_bytes(f"s3://{BUCKET}/bounded/late.txt") == b"made it"


def _adapter_put(name: str) -> bytes:
    """The start of the request line that uploads the first file of job `name`'s adapter/."""
    return f"PUT /{BUCKET}/runs/{name}/adapter/".encode()


def exists_direct(s3_server: Any, uri: str) -> bool:
    """Whether an object exists, asked of the server directly (not through the proxy)."""
    loc = object_store.parse_s3(uri)
    found = s3_server.client().list_objects_v2(Bucket=loc.bucket, Prefix=loc.key).get("KeyCount", 0)
    return bool(found)


def s3_job(name: str, model: Path, data: Path, **spec: Any) -> dict[str, Any]:
    """A job whose output (checkpoints, progress, artifacts) goes to the bucket; model and data stay local."""
    return job_document(name, model, data, f"s3://{BUCKET}/runs", **spec)


def output_uri(name: str) -> str:
    """Where `python -m sftjob_trainer` puts a job's output (no namespace: `<uri>/<name>`)."""
    return f"s3://{BUCKET}/runs/{name}"


@pytest.mark.scenario(AREA, ARTIFACT_OUTAGE)
def test_outage_longer_than_the_budget_fails_the_run_without_manifest(
        ray_cluster: None, s3_server: Any, proxy: FlakyProxy, tiny_model_dir: Path, copy_task: Path,
        tmp_path: Path) -> None:
    s3_server.create_bucket(BUCKET)
    name = "artifact-outage"
    # Every attempt of the first adapter upload is lost, then the store answers again (the driver can report).
    proxy.arm(_adapter_put(name), drop=CONNECTIONS_PER_OPERATION - 1, only=_adapter_put(name))
    proc = run_trainer(s3_job(name, tiny_model_dir, copy_task, hyperparameters={
        "maxSteps": 2, "batchSize": 8, "learningRate": 1e-2, "logInterval": 1, "seed": 1}), through(proxy, s3_server))
    assert (proc.returncode, proxy.dropped) == (1, CONNECTIONS_PER_OPERATION), proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("sftjob-trainer: StorageUnavailable: ")
    out = fetch(s3_server, output_uri(name), tmp_path)
    progress = progress_of(out)
    assert progress.phase == "Failed" and progress.error is not None
    assert (progress.error.code, progress.error.retryable) == ("StorageUnavailable", True)
    assert "/adapter/" in progress.error.message
    assert not (out / MANIFEST_FILE).exists()


@pytest.fixture(scope="module")
def checkpoint_outage_runs(ray_cluster: None, s3_server: Any, proxy: FlakyProxy, tiny_model_dir: Path,
                           copy_task: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Attempt 1 loses the store during its step-4 checkpoint upload, for good; attempt 2 runs once it is back.

    The step-4 checkpoint's trainer_state.json lands on the server, but pyarrow never hears so and every
    connection after it is reset: the upload fails and leaves a checkpoint_*/ directory Ray never registered.
    Attempt 2 meets a short blip during its adapter upload: its first PUT and the next 2 connections of those
    uploads are lost (3 of the 12 HTTP attempts one upload may make).
    """
    s3_server.create_bucket(BUCKET)
    name = "checkpoint-outage"
    env = through(proxy, s3_server)
    doc = s3_job(name, tiny_model_dir, copy_task)
    proxy.arm(b"/checkpoint/trainer_state.json?uploadId=", drop=None, after_server=True, skip=1)
    first = run_trainer(doc, env)
    tripped = proxy.dropped
    after_first = fetch(s3_server, output_uri(name), tmp_path_factory.mktemp("attempt-1"))
    proxy.heal()
    proxy.arm(_adapter_put(name), drop=2, only=_adapter_put(name))
    second = run_trainer(doc, env, SFTJOB_ATTEMPT="2")
    return {"first": first, "tripped": tripped, "after_first": after_first, "second": second, "blip": proxy.dropped,
            "out": fetch(s3_server, output_uri(name), tmp_path_factory.mktemp("attempt-2")),
            "checkpoints": f"checkpoints/{name}"}


def checkpoint_steps(out: Path, run: str) -> dict[str, int]:
    """checkpoint_*/ directory → the Trainer step in its trainer_state.json (directories without one left out)."""
    found = {}
    for state in sorted((out / run).glob("checkpoint_*/checkpoint/trainer_state.json")):
        found[state.parent.parent.name] = int(json.loads(state.read_text())["global_step"])
    return found


@pytest.mark.scenario(AREA, CHECKPOINT_OUTAGE)
def test_outage_during_checkpoint_upload_fails_the_attempt_cleanly(checkpoint_outage_runs: dict[str, Any]) -> None:
    runs = checkpoint_outage_runs
    first, out, run = runs["first"], runs["after_first"], runs["checkpoints"]
    assert runs["tripped"] >= 1
    assert first.returncode == 1, first.stderr[-3000:]
    # Not even the Failed report got through: one line on stderr, exit code 1, progress.json keeps the last word.
    assert first.stderr.strip().splitlines()[-1].startswith("sftjob-trainer: StorageUnavailable: ")
    assert "Traceback" not in first.stderr
    assert progress_of(out).phase == "Running"
    assert not (out / MANIFEST_FILE).exists()
    # The failed upload left a step-4 directory on the server, which Ray never registered. (Ray's controller writes
    # its snapshot in the background: the outage may also have cut the write that registers step 2.)
    steps = checkpoint_steps(out, run)
    assert sorted(steps.values()) == [2, 4]
    snapshot_file = out / run / "checkpoint_manager_snapshot.json"
    snapshot = snapshot_file.read_text() if snapshot_file.exists() else ""
    assert not [d for d, step in steps.items() if step == 4 and d in snapshot]


@pytest.mark.scenario(AREA, ARTIFACT_BLIP)
def test_short_outage_during_artifact_upload_is_retried(checkpoint_outage_runs: dict[str, Any]) -> None:
    second, out = checkpoint_outage_runs["second"], checkpoint_outage_runs["out"]
    assert checkpoint_outage_runs["blip"] == 3
    assert second.returncode == 0, second.stderr[-3000:]
    assert progress_of(out).phase == "Succeeded"
    assert_complete(out)


@pytest.mark.scenario(AREA, CHECKPOINT_OUTAGE)
def test_attempt_after_a_checkpoint_outage_finishes(checkpoint_outage_runs: dict[str, Any],
                                                     tiny_model_dir: Path) -> None:
    second, out = checkpoint_outage_runs["second"], checkpoint_outage_runs["out"]
    assert second.returncode == 0, second.stderr[-3000:]
    progress = progress_of(out)
    assert progress.phase == "Succeeded" and progress.attempt == 2
    assert_complete(out)
    assert_adapter_reloads(out, tiny_model_dir)


@pytest.mark.scenario(AREA, CHECKPOINT_OUTAGE)
def test_attempt_after_a_checkpoint_outage_resumes_from_a_registered_checkpoint(
        checkpoint_outage_runs: dict[str, Any]) -> None:
    out = checkpoint_outage_runs["out"]
    progress = progress_of(out)
    assert progress.resumed_from_step == 2
    assert progress.step == 4 and loss_steps(out) == [1, 2, 3, 4]  # resumed from the unregistered one: 5 of 4
