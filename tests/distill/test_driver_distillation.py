"""Distillation inside a job: the driver generates (phase `Generating`), then trains on the teacher's answers.

The end-to-end test runs the real trainer (`run_job`, one Ray Train worker) on the tiny student with the real
SmolLM2-135M-Instruct served by `transformers serve` as the teacher, behind a recording proxy on loopback that
counts the requests, and then a retry of the same job, which must send none. The rest checks the glue without Ray:
progress fields, paths, the manifest, the order of the checks.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from distill_helpers import ARITHMETIC, FakeTeacher, write_jsonl

from sftjob_api.layout import MANIFEST_FILE, PROGRESS_FILE
from sftjob_api.progress import ProgressFile
from sftjob_api.types import DISTILLED_TRAIN_URI, DistillationStats, SFTJob, parse_sftjob
from sftjob_trainer.artifacts import manifest
from sftjob_trainer.distill import (
    DISTILLED_FILE,
    REJECTED_FILE,
    STATS_FILE,
    DistillResult,
    GenerationProgress,
    driver_step,
)
from sftjob_trainer.distill.driver_step import generation_counts, progress_fields, progress_message
from sftjob_trainer.job_context import absolute_paths, context_for
from sftjob_trainer.reporting import ProgressWriter
from sftjob_trainer.trainer_error import TrainerError

if TYPE_CHECKING:
    from tests.conftest import OpenAIServer

_NUMBER = re.compile(r"-?\d+")


def job_document(name: str, model: str, output: str, teacher: dict[str, Any], prompts: str,
                 validation: str | None = None, **distillation: Any) -> dict[str, Any]:
    """A distillation job with the smallest training settings (LoRA, 2 steps, one CPU worker)."""
    dataset: dict[str, Any] = {"train": {"uri": DISTILLED_TRAIN_URI}, "maxSeqLength": 128}
    if validation is not None:
        dataset["validation"] = {"uri": validation}
    return {
        "apiVersion": "sftjob.dev/v1alpha1", "kind": "SFTJob", "metadata": {"name": name},
        "spec": {
            "model": {"source": model},
            "dataset": dataset,
            "distillation": {"teacher": {"concurrency": 2, "timeoutSeconds": 120, "maxRetries": 1, **teacher},
                             "prompts": {"uri": prompts, "columnMap": {"question": "prompt"}},
                             "temperature": 0, "maxTokens": 48, **distillation},
            "method": {"type": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
            "hyperparameters": {"maxSteps": 2, "batchSize": 2, "learningRate": 1e-3, "logInterval": 1, "seed": 1},
            "compute": {"numWorkers": 1, "gpusPerWorker": 0, "cpusPerWorker": 1},
            "checkpointing": {"interval": 2, "keep": 1},
            "evaluation": {"numSamples": 1, "maxNewTokens": 4},
            "output": {"uri": output},
        },
    }


class RecordingProxy:
    """Forwards `/v1/...` POSTs to a real OpenAI-compatible server and counts them (the teacher's bill)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.requests: list[str] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                proxy.requests.append(json.loads(body)["messages"][-1]["content"])
                request = urllib.request.Request(  # noqa: S310 - the loopback teacher
                    proxy.upstream + self.path.removeprefix("/v1"), data=body,
                    headers={"Content-Type": "application/json"}, method="POST")
                try:
                    with urllib.request.urlopen(request, timeout=120) as response:  # noqa: S310 - loopback
                        status, payload = response.status, response.read()
                except urllib.error.HTTPError as err:
                    status, payload = err.code, err.read()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxy(openai_server: OpenAIServer) -> Iterator[RecordingProxy]:
    recording = RecordingProxy(openai_server.base_url)
    yield recording
    recording.close()


@pytest.fixture
def progress_writes(monkeypatch: pytest.MonkeyPatch) -> list[ProgressFile]:
    """Every progress.json the driver writes in this process (rank 0 writes from its own)."""
    writes: list[ProgressFile] = []
    flush = ProgressWriter.flush

    def recording(self: ProgressWriter) -> None:
        flush(self)
        writes.append(self.state)

    monkeypatch.setattr(ProgressWriter, "flush", recording)
    return writes


# ------------------------------------------------------------------------------------------- end to end


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_prompts_to_a_trained_model_through_a_real_teacher_and_a_retry_that_asks_nothing(
        openai_server: OpenAIServer, proxy: RecordingProxy, tiny_model_dir: Path, tmp_path: Path,
        progress_writes: list[ProgressFile], monkeypatch: pytest.MonkeyPatch) -> None:
    from sftjob_trainer import driver

    rows = [{"question": f"What is {a} plus {b}? Answer with the number.", "answer": str(a + b)}
            for a, b in ARITHMETIC[:4]]
    rows.append(rows[0])  # the same prompt twice: asked once, its second answer an exact duplicate
    contaminated = rows[3]["question"]
    prompts = write_jsonl(tmp_path / "prompts.jsonl", rows)
    validation = write_jsonl(tmp_path / "val.jsonl", [{"messages": [
        {"role": "user", "content": contaminated}, {"role": "assistant", "content": rows[3]["answer"]}]}])
    document = job_document("distilled", str(tiny_model_dir), str(tmp_path / "out"),
                            {"endpoint": proxy.url, "model": openai_server.model}, str(prompts), str(validation),
                            filters={"decontaminate": {"ngram": 5}})
    job = parse_sftjob(document)

    # Attempt 1 is stopped by SIGTERM (a node drain) as soon as the answers are in, before training.
    prepare = driver.prepare

    def drained(*args: Any) -> Any:
        monkeypatch.setattr(driver, "prepare", prepare)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises KeyboardInterrupt here
        raise AssertionError("SIGTERM did not stop the attempt")

    monkeypatch.setattr(driver, "prepare", drained)
    with pytest.raises(TrainerError) as stopped:
        driver.run_job(context_for(job, 1))
    assert stopped.value.code == "Cancelled" and stopped.value.retryable

    # Generation: 4 distinct prompts asked once each, every answer accounted for by a reason or kept.
    assert Counter(proxy.requests) == Counter(row["question"] for row in rows[:4])
    first = [w for w in progress_writes if w.attempt == 1]
    assert [w.phase for w in first][:2] == ["Initializing", "Generating"] and first[-1].phase == "Failed"
    counts = [generation_counts(w.message) for w in first if w.phase == "Generating"]
    assert [c for c in counts if c is not None][-1] == (5, 5)  # what `sftjob run`'s bar shows
    stats = first[-1].distillation  # kept in progress.json with the failure
    assert stats is not None and stats.complete
    assert (stats.prompts, stats.responses, stats.requests, stats.cached_requests) == (5, 5, 4, 0)
    assert stats.kept >= 1 and stats.kept + sum(stats.dropped.values()) == 5
    out = tmp_path / "out" / "distilled"
    kept = [json.loads(line) for line in (out / DISTILLED_FILE).read_text().splitlines()]
    rejected = [json.loads(line) for line in (out / REJECTED_FILE).read_text().splitlines()]
    assert len(kept) == stats.kept and Counter(r["reason"] for r in rejected) == Counter(stats.dropped)
    kept_prompts = [row["messages"][0]["content"] for row in kept]
    assert contaminated not in kept_prompts and len(set(kept_prompts)) == len(kept_prompts)
    repeat = [r["reason"] for r in rejected if r["messages"][0]["content"] == rows[0]["question"]]
    assert repeat == ["duplicate"] if rows[0]["question"] in kept_prompts else len(repeat) == 2
    verdict = next(r["reason"] for r in rejected if r["messages"][0]["content"] == contaminated)
    assert verdict in ("contaminated", "truncated", "empty", "refusal")  # filters before decontamination win

    # Attempt 2 (the operator's retry): every answer from the cache, the teacher sees nothing, then SFT.
    result = driver.run_job(context_for(job, 2))
    assert len(proxy.requests) == 4
    retried = result.progress.distillation
    assert retried is not None and (retried.requests, retried.cached_requests) == (0, 4)
    assert retried.cache is not None and retried.cache.startswith("hit ") and retried.sha256 == stats.sha256
    assert result.progress.phase == "Succeeded" and result.progress.step == 2
    assert result.progress.dataset is not None and result.progress.dataset.train_examples == stats.kept
    phases = [w.phase for w in progress_writes if w.attempt == 2]
    assert phases.index("Generating") < phases.index("Preparing") < phases.index("Running") < phases.index(
        "Succeeded")

    # Outputs: the manifest lists the generated files and their stats, and keeps the spec as written.
    body = json.loads((out / MANIFEST_FILE).read_text())
    assert body["distillation"] == retried.to_wire()
    assert json.loads((out / PROGRESS_FILE).read_text())["distillation"] == retried.to_wire()
    for name in (DISTILLED_FILE, STATS_FILE, REJECTED_FILE):
        assert body["files"][name]["size"] == (out / name).stat().st_size
    assert body["spec"]["dataset"]["train"]["uri"] == DISTILLED_TRAIN_URI and body["spec"]["distillation"]
    assert "The training data was generated by the teacher" in (out / "README.md").read_text()


# ------------------------------------------------------------------------------------ the glue, without Ray


def _job(tmp_path: Path, teacher_url: str = "http://127.0.0.1:9/v1", model: str = "/models/student") -> SFTJob:
    return parse_sftjob(job_document("glue", model, str(tmp_path / "out"), {"endpoint": teacher_url,
                                                                           "model": "teacher"}, "prompts.jsonl"))


def test_generation_progress_becomes_progress_fields_the_bar_reads_back() -> None:
    report = GenerationProgress(stage="answers", done=12, total=40, completion_tokens=900, tokens_per_second=45.0,
                                eta_seconds=185.0, requests=12, cached=0)
    fields = progress_fields(report)
    assert fields["phase"] == "Generating" and fields["message"] == "answers: prompts 12/40, ETA 3m5s"
    assert (fields["percentage"], fields["tokens_per_second"]) == (30.0, 45.0)
    assert fields["estimated_finish_time"].endswith("Z")
    ProgressFile.model_validate({**fields, "updated_at": "2026-05-01T12:00:00Z"})
    assert generation_counts(progress_message(report)) == (12, 40)
    assert generation_counts("starting") is None and generation_counts(None) is None


def test_the_reserved_train_uri_is_not_made_a_path_but_the_prompts_are(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    job = absolute_paths(_job(tmp_path))
    assert job.spec.dataset.train.uri == DISTILLED_TRAIN_URI
    assert job.spec.distillation is not None and job.spec.distillation.prompts.uri == str(tmp_path / "prompts.jsonl")
    assert context_for(_job(tmp_path)).job.spec.dataset.train.uri == DISTILLED_TRAIN_URI


def test_the_step_records_progress_and_hands_back_a_spec_on_the_distilled_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, progress_writes: list[ProgressFile]) -> None:
    ctx = context_for(_job(tmp_path))
    stats = DistillationStats(uri=f"{ctx.output_uri}/{DISTILLED_FILE}", complete=True, prompts=2, responses=2, kept=2)

    def fake(spec: Any, output_uri: str, progress: Any) -> DistillResult:
        for done in (0, 1, 2):
            progress(GenerationProgress("answers", done, 2, 10 * done, 5.0 if done else None, None, done, 0))
        return DistillResult(uri=stats.uri or "", stats=stats, stats_uri=f"{output_uri}/{STATS_FILE}")

    monkeypatch.setattr(driver_step, "distill", fake)
    writer = ProgressWriter(ctx.output_uri, 1, interval_s=0)
    trained = driver_step.generate_training_data(ctx, writer)

    assert trained.job.spec.distillation is None
    assert trained.job.spec.dataset.train.uri == stats.uri
    assert ctx.job.spec.distillation is not None  # the job as written is left as it is
    assert [(w.phase, w.message) for w in progress_writes][:4] == [
        ("Generating", "asking the teacher"), ("Generating", "answers: prompts 0/2"),
        ("Generating", "answers: prompts 1/2"), ("Generating", "answers: prompts 2/2")]
    assert writer.state.distillation == stats and writer.state.percentage == 0.0
    assert writer.state.tokens_per_second is None and writer.state.estimated_finish_time is None


def test_a_failed_generation_leaves_its_partial_stats_in_progress(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = context_for(_job(tmp_path))
    partial = DistillationStats(complete=False, prompts=4, requests=3)

    def gone(spec: Any, output_uri: str, progress: Any) -> DistillResult:
        (Path(output_uri) / STATS_FILE).parent.mkdir(parents=True, exist_ok=True)
        (Path(output_uri) / STATS_FILE).write_text(json.dumps(partial.to_wire()))
        raise TrainerError("TeacherUnavailable", "the teacher did not answer")

    monkeypatch.setattr(driver_step, "distill", gone)
    writer = ProgressWriter(ctx.output_uri, 1, interval_s=0)
    with pytest.raises(TrainerError, match="did not answer"):
        driver_step.generate_training_data(ctx, writer)
    assert writer.state.distillation == partial


def test_a_bad_model_fails_before_the_teacher_is_asked(tmp_path: Path, fake_teacher: FakeTeacher) -> None:
    from sftjob_trainer.driver import run_job

    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"question": "What is 1 plus 2?"}])
    job = parse_sftjob(job_document("bad-model", str(tmp_path / "missing"), str(tmp_path / "out"),
                                    {"endpoint": fake_teacher.url, "model": "teacher"}, str(prompts)))
    with pytest.raises(TrainerError) as caught:
        run_job(context_for(job))
    assert caught.value.code == "ModelUnreadable"
    assert fake_teacher.seen == []
    progress = json.loads((tmp_path / "out" / "bad-model" / PROGRESS_FILE).read_text())
    assert (progress["phase"], progress["error"]["code"]) == ("Failed", "ModelUnreadable")


def test_the_manifest_holds_the_distillation_stats() -> None:
    job = parse_sftjob(job_document("m", "hf://org/m", "s3://out-bucket", {"endpoint": "http://t/v1", "model": "t"},
                                    "s3://data/p.jsonl"))
    stats = DistillationStats(uri="s3://out-bucket/m/data/distilled.jsonl", complete=True, prompts=3, responses=3,
                              kept=2, dropped={"duplicate": 1})
    progress = ProgressFile(phase="Exporting", updated_at="2026-05-01T12:00:00Z", distillation=stats)
    assert json.loads(manifest(job, progress, {}, None, {}))["distillation"] == stats.to_wire()
    without = ProgressFile(phase="Exporting", updated_at="2026-05-01T12:00:00Z")
    assert json.loads(manifest(job, without, {}, None, {}))["distillation"] is None
    assert driver_step.manifest_files("s3://out-bucket/m", None) == {}
