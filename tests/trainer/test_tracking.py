"""Experiment tracking against a real MLflow tracking server on loopback, TensorBoard files and W&B offline.

The headline test kills a training attempt with SIGKILL after it logged past its last checkpoint, resumes it in a
new process (as a retried attempt does), and checks that the MLflow run, the TensorBoard event files and the W&B
run are the same ones and hold every step exactly once. The attempts are a tiny HF Trainer in subprocesses
(tracking_attempt.py) rather than the whole Ray Train path: the callback is the same, and a subprocess is the
only honest way to die by SIGKILL mid-run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from tests.conftest import _free_port
from tests.trainer.conftest import job_document

from sftjob_api.layout import MANIFEST_FILE
from sftjob_api.progress import ProgressFile
from sftjob_api.types import (
    DatasetStats,
    EvaluationStatus,
    ResolvedSettings,
    SFTJob,
    TrackingSpec,
    TrackingStatus,
    parse_sftjob,
)
from sftjob_trainer import tracking

ATTEMPT = Path(__file__).with_name("tracking_attempt.py")
MAX_STEPS = 8
KILL_AT = 6  # logged steps 1..6; the newest checkpoint is step 4, so the resumed attempt trains 5 and 6 again
SERVER_START_S = 180


class MlflowServer:
    """`mlflow server` on 127.0.0.1 (SQLite runs, artifacts proxied into a temporary directory), starting."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.uri = f"http://127.0.0.1:{_free_port()}"
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "OMP_NUM_THREADS": "1"}
        command = [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1",
                   "--port", self.uri.rsplit(":", 1)[1], "--workers", "1",
                   "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                   "--artifacts-destination", str(root / "artifacts")]
        with (root / "server.log").open("wb") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)
        self.up = False

    def ready(self) -> str:
        """Wait until the server answers /health (it takes 10-60 s on a busy machine); its URI."""
        deadline = time.monotonic() + SERVER_START_S
        while not self.up:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as answer:  # noqa: S310 - loopback
                    self.up = answer.status == 200
            except OSError:
                pass
            if not self.up:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"mlflow server did not start: {(self.root / 'server.log').read_text()[-3000:]}")
                time.sleep(0.3)
        return self.uri


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """The module's MLflow tracking server, started (not waited for: tests overlap its start with other work)."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow"))
    try:
        yield server
    finally:
        _stop_group(server.proc)


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """End a process started in its own session and whatever it started (the server's uvicorn, wandb-core)."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            time.sleep(0.2)  # let the group's other members go too
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture
def wandb_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """W&B with its settings and caches under the test's directory, no API key and no network."""
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home" / name.lower()))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    yield
    if "wandb" in sys.modules:
        sys.modules["wandb"].teardown()  # the wandb-core service that finish() started in this process


def _job(output: Path, tracking_spec: dict[str, Any]) -> SFTJob:
    doc = job_document("tracked", "/models/base", "/data/train.jsonl", None, str(output.parent),
                       tracking=tracking_spec)
    return parse_sftjob(doc)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Attempt processes of a test, ended with it even when it fails before waiting for them."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        _stop_group(proc)


def _launch(tmp: Path, job: SFTJob, attempt: int, output: Path, model_dir: Path, kill_at: int,
            processes: list[subprocess.Popen[bytes]]) -> tuple[subprocess.Popen[bytes], Path]:
    """Start an attempt's process; it imports, then waits for the progress file that `_go` writes."""
    job_json, progress_json = tmp / "job.json", tmp / f"progress-{attempt}.json"
    job_json.write_text(json.dumps(job.to_wire()))
    command = [sys.executable, str(ATTEMPT), str(job_json), str(progress_json), str(output), str(model_dir),
               str(tmp / "hf"), str(MAX_STEPS), str(kill_at)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    processes.append(proc)
    return proc, progress_json


def _go(progress_json: Path, progress: ProgressFile) -> None:
    tmp = progress_json.with_suffix(".tmp")
    tmp.write_text(progress.model_dump_json(by_alias=True))
    tmp.replace(progress_json)


def _wait(proc: subprocess.Popen[bytes]) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=300)
    finally:
        _stop_group(proc)  # a SIGKILLed attempt leaves its wandb-core behind
    return proc.returncode, out.decode()[-3000:]


def _progress(attempt: int, status: TrackingStatus | None, resolved: ResolvedSettings) -> ProgressFile:
    return ProgressFile(phase="Running", attempt=attempt, updated_at="2026-01-01T00:00:00Z", tracking=status,
                        resolved=resolved)


@pytest.mark.slow
def test_kill_and_resume_continues_the_same_runs_with_each_step_once(
    mlflow_server: MlflowServer, tiny_model_dir: Path, tmp_path: Path, wandb_env: None,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    from mlflow.tracking import MlflowClient

    output = tmp_path / "jobs" / "tracked"
    spec = {"mlflow": {"trackingUri": mlflow_server.uri, "experiment": "resume-test"}, "tensorboard": True,
            "wandb": {"project": "sftjob-tests", "mode": "offline"}}
    job = _job(output, spec)
    resolved = ResolvedSettings(learning_rate=1e-3, global_batch_size=2, total_steps=MAX_STEPS)
    # Both attempts' processes import torch, transformers and the trackers while the server starts.
    attempt1, progress1 = _launch(tmp_path, job, 1, output, tiny_model_dir, KILL_AT, processes)
    attempt2, progress2 = _launch(tmp_path, job, 2, output, tiny_model_dir, 0, processes)
    uri = mlflow_server.ready()

    # attempt 1: the driver opens the runs, rank 0 logs steps 1..6 and dies by SIGKILL (checkpoint: step 4)
    first = tracking.start(job, str(output), 1, resolved, earlier=None, resume=True)
    assert first is not None and first.mlflow is not None and first.wandb is not None
    assert first.message is None
    _go(progress1, _progress(1, first, resolved))
    code, out = _wait(attempt1)
    assert code == -signal.SIGKILL, out
    assert "trained step 6 " in out and "trained step 7 " not in out
    assert sorted(p.name for p in (tmp_path / "hf").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]

    # attempt 2: the next driver reads attempt 1's tracking status back from progress.json and reuses its runs
    second = tracking.start(job, str(output), 2, resolved, earlier=first, resume=True)
    assert second == first
    _go(progress2, _progress(2, second, resolved))
    code, out = _wait(attempt2)
    assert code == 0, out
    assert "trained step 4 " not in out and "trained step 5 " in out  # resumed at 4: steps 5 and 6 trained again
    retrained = {int(line.split()[2]): float(line.split()[4]) for line in out.splitlines()
                 if line.startswith("trained step ") and line.split()[4] != "None"}

    # the end: dataset stats, evaluation and manifest.json become artifacts; the run is finished
    (output / MANIFEST_FILE).write_text('{"files": {}}\n')
    final = _progress(2, second, resolved).model_copy(update={
        "phase": "Succeeded", "dataset": DatasetStats(rows=32, train_examples=32),
        "evaluation": EvaluationStatus(score="exact_match 0.5")})
    tracking.finish(job, str(output), final)

    client = MlflowClient(tracking_uri=uri)
    run_id = first.mlflow.run_id
    experiment = client.get_experiment_by_name("resume-test")
    assert [r.info.run_id for r in client.search_runs([experiment.experiment_id])] == [run_id]  # one run per job
    losses = client.get_metric_history(run_id, "train/loss")
    assert sorted(m.step for m in losses) == list(range(1, MAX_STEPS + 1))  # each step exactly once
    assert sorted(m.step for m in client.get_metric_history(run_id, "train/learning_rate")) == list(range(1, 9))
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "tracked"
    assert run.data.tags[tracking.ATTEMPT_TAG] == "2"
    assert run.data.tags[tracking.OUTPUT_TAG] == str(output)
    assert run.data.params["resolved.learningRate"] == "0.001"
    assert run.data.params["resolved.globalBatchSize"] == "2"
    assert run.data.params["hyperparameters.maxSteps"] == "4"  # the spec's value, as written
    assert run.data.params["method.type"] == "lora"
    assert {a.path for a in client.list_artifacts(run_id)} == {MANIFEST_FILE, "dataset_stats.json",
                                                               "evaluation.json"}
    stats = json.loads(Path(client.download_artifacts(run_id, "dataset_stats.json", str(tmp_path))).read_text())
    assert stats == {"dropped": {}, "rows": 32, "trainExamples": 32}
    assert first.mlflow.url == f"{uri}/#/experiments/{experiment.experiment_id}/runs/{run_id}"

    # TensorBoard: attempt 1's file holds 1..6 (flushed at each log), attempt 2's 7..8
    scalars = tracking.read_tensorboard_scalars(str(output / "tensorboard"))
    assert sorted(step for step, _ in scalars["train/loss"]) == list(range(1, MAX_STEPS + 1))
    assert len(list((output / "tensorboard").glob("events.out.tfevents.*"))) == 2
    by_step = {m.step: m.value for m in losses}
    # steps 5 and 6 keep attempt 1's values, which attempt 2 computed again from the same checkpoint state
    assert [by_step[step] for step in (5, 6)] == pytest.approx([retrained[5], retrained[6]], rel=1e-5)
    assert all(abs(by_step[step] - value) < 1e-6 for step, value in scalars["train/loss"])  # the same values
    assert first.tensorboard_uri == str(output / "tensorboard")

    # W&B offline: every process wrote its files under the output, all for the same run id, without network
    wandb_id = first.wandb.run_id
    runs = sorted((output / "wandb").glob("offline-run-*"))
    assert len(runs) >= 2  # attempt 1, attempt 2 and finish (named by the second: two may share one)
    assert all(path.name.endswith(f"-{wandb_id}") and (path / f"run-{wandb_id}.wandb").is_file() for path in runs)
    marks = json.loads((output / "wandb" / tracking.WANDB_STEPS_FILE).read_text())
    assert marks["train/loss"] == MAX_STEPS
    assert first.wandb.mode == "offline" and first.wandb.url is None


@pytest.mark.slow
def test_a_new_run_without_resume_and_the_status_on_an_unreachable_server(
    mlflow_server: MlflowServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    output = tmp_path / "jobs" / "tracked"
    job = _job(output, {"mlflow": {"trackingUri": mlflow_server.ready(), "experiment": "fresh"}})
    first = tracking.start(job, str(output), 1, None, earlier=None, resume=True)
    again = tracking.start(job, str(output), 2, None, earlier=first, resume=True)
    fresh = tracking.start(job, str(output), 3, None, earlier=first, resume=False)  # resumeFrom: none
    lost = tracking.start(job, str(output), 4, None, earlier=None, resume=True)  # progress.json lost the id
    assert first is not None and first.mlflow is not None
    assert again is not None and again.mlflow == first.mlflow
    assert fresh is not None and fresh.mlflow is not None and fresh.mlflow.run_id != first.mlflow.run_id
    assert lost is not None and lost.mlflow is not None and lost.mlflow.run_id == fresh.mlflow.run_id  # the newest

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    dead = _job(output, {"mlflow": {"trackingUri": f"http://127.0.0.1:{_free_port()}"}, "tensorboard": True})
    status = tracking.start(dead, str(output), 1, None, earlier=None, resume=True)
    assert status is not None and status.mlflow is None
    assert status.tensorboard_uri == str(output / "tensorboard")
    assert status.message is not None and status.message.startswith("MLflow at http://127.0.0.1:")
    assert status.message.endswith("; training goes on without it")


def test_no_tracking_by_default(tmp_path: Path) -> None:
    job = parse_sftjob(job_document("plain", "/m", "/d/train.jsonl", None, str(tmp_path)))
    assert job.spec.tracking == TrackingSpec()
    assert tracking.start(job, str(tmp_path), 1, None, earlier=None, resume=True) is None
    assert tracking.tracking_callback(job, str(tmp_path), _progress(1, None, ResolvedSettings())) is None


def test_tracking_spec_on_the_wire() -> None:
    spec = TrackingSpec.model_validate({
        "mlflow": {"trackingUri": "https://mlflow.example.com", "secretRef": {"name": "mlflow-token"}},
        "tensorboard": True, "wandb": {"project": "p", "entity": "team"}})
    assert spec.to_wire() == {
        "mlflow": {"trackingUri": "https://mlflow.example.com", "experiment": "sftjob",
                   "secretRef": {"name": "mlflow-token"}},
        "tensorboard": True, "wandb": {"project": "p", "entity": "team", "mode": "online"}}
    with pytest.raises(ValidationError, match="trackingUri"):
        parse_sftjob(job_document("bad", "/m", "/d/train.jsonl", None, "/out",
                                  tracking={"mlflow": {"trackingUri": "mlflow.svc:5000"}}))
    with pytest.raises(ValidationError, match="mode"):
        parse_sftjob(job_document("bad", "/m", "/d/train.jsonl", None, "/out",
                                  tracking={"wandb": {"project": "p", "mode": "disabled"}}))


def test_params_metrics_and_credentials() -> None:
    doc = job_document("p", "/m", "/d/train.jsonl", None, "/out", tracking={"mlflow": {"trackingUri": "http://m"}})
    doc["spec"]["model"]["secretRef"] = doc["spec"]["dataset"]["secretRef"] = {"name": "creds"}
    job = parse_sftjob(doc)
    params = tracking.hyperparameters(job, ResolvedSettings(learning_rate=2e-4, precision="bf16"))
    assert params["hyperparameters.learningRate"] == "0.01"
    assert params["method.lora.r"] == "8"
    assert params["resolved.learningRate"] == "0.0002"
    assert params["resolved.precision"] == "bf16"
    assert params["model.source"] == "/m"
    assert not [key for key in params if "secretRef" in key or key.startswith(("output", "tracking"))]

    assert tracking.metric_records({"loss": 1.5, "grad_norm": 2, "eval_loss": 0.5, "epoch": 0.25,
                                    "note": "text", "flag": True}) == {
        "train/loss": 1.5, "train/grad_norm": 2.0, "eval/loss": 0.5, "train/epoch": 0.25}

    env = {"SFTJOB_MLFLOW_MLFLOW_TRACKING_TOKEN": "from-mlflow-secret", "MLFLOW_TRACKING_TOKEN": "shadowed",
           "SFTJOB_WANDB_WANDB_API_KEY": "k", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1"}
    tracking.apply_credentials(env)
    assert env["MLFLOW_TRACKING_TOKEN"] == "from-mlflow-secret"
    assert env["WANDB_API_KEY"] == "k"
    assert env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "1"  # the pod's own setting wins
    assert env["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "30"


def test_tensorboard_reader_stops_at_a_torn_record(tmp_path: Path) -> None:
    from tensorboardX import SummaryWriter

    with SummaryWriter(logdir=str(tmp_path)) as writer:
        for step in (1, 2, 3):
            writer.add_scalar("train/loss", 1.0 / step, step)
    (path,) = tmp_path.glob("events.out.tfevents.*")
    assert tracking.read_tensorboard_scalars(str(tmp_path)) == {
        "train/loss": [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]}
    path.write_bytes(path.read_bytes()[:-7])  # a writer killed in the middle of its last record
    assert tracking.read_tensorboard_scalars(str(tmp_path)) == {"train/loss": [(1, 1.0), (2, 0.5)]}
