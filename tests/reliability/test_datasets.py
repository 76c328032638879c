"""Broken datasets (tests/corpus/datasets/cases.yaml) through every path that reads a dataset.

Each case goes through `sftjob data inspect`, `sftjob validate` (a job naming the file), the trainer
preflight (`prepare_dataset`), the trainer's driver (`run_job`, which must write nothing but a Failed
progress.json) and the operator's status derivation (Failed, not retried). The CLI runs in-process
with SFTJOB_DEBUG=1, so an internal error raises instead of being turned into a message.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from sftjob_api.codes import NOT_RETRYABLE
from sftjob_api.layout import PROGRESS_FILE
from sftjob_api.progress import ProgressFile

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "tests" / "corpus" / "datasets"
CASES: dict[str, dict[str, Any]] = yaml.safe_load((CORPUS / "cases.yaml").read_text())["cases"]
# The 50 MB row of the issue: far above the pipeline's 4 MiB per-row limit, generated, never committed.
HUGE_ROW_BYTES = 50 * 1000 * 1000
GOOD_ROW = {"messages": [{"role": "user", "content": "What colour is the sky?"},
                         {"role": "assistant", "content": "Blue."}]}
# One paragraph per problem: even the 50 MB row must not be echoed back.
MAX_MESSAGE_CHARS = 5000
AREA = "Bad input"


@dataclass(frozen=True)
class Case:
    """One broken dataset and what it must produce."""

    name: str
    code: str
    line: int | None
    field: str | None
    message: str
    generate: str | None

    def location(self, path: Path) -> str:
        """`FILE:LINE` (or `FILE`) as messages print it."""
        return f"{path}:{self.line}" if self.line is not None else str(path)


def _params() -> list[Any]:
    out = []
    for name, spec in sorted(CASES.items()):
        case = Case(name, spec["code"], spec["line"], spec["field"], spec["message"], spec.get("generate"))
        marks = [pytest.mark.xfail(strict=True, reason=spec["gap"])] if spec.get("gap") else []
        out.append(pytest.param(case, id=name, marks=marks))
    return out


PARAMS = _params()


@pytest.fixture
def dataset(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """The case's file: the committed one, or one generated in tmp_path."""
    case: Case = request.param
    if case.generate is None:
        return CORPUS / case.name
    assert case.generate == "huge_row", case.generate
    path = tmp_path / case.name
    with path.open("wb") as handle:
        handle.write(json.dumps(GOOD_ROW).encode() + b"\n")
        handle.write(b'{"messages": [{"role": "user", "content": "')
        handle.write(b"x" * HUGE_ROW_BYTES)
        handle.write(b'"}, {"role": "assistant", "content": "y"}]}\n')
    return path


def _run_cli(*args: str) -> tuple[int, str, str]:
    from sftjob_cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def _job_document(model: Path, data: Path, output: Path) -> dict[str, Any]:
    return {
        "apiVersion": "sftjob.dev/v1alpha1",
        "kind": "SFTJob",
        "metadata": {"name": "broken-data"},
        "spec": {"model": {"source": str(model)}, "dataset": {"train": {"uri": str(data)}},
                 "output": {"uri": str(output)}},
    }


def _check_message(case: Case, path: Path, stderr: str, stdout: str) -> None:
    assert "Traceback" not in stderr + stdout
    assert "internal error" not in stderr
    assert len(stderr) < MAX_MESSAGE_CHARS
    assert case.message in stderr, stderr
    assert str(path) in stderr, stderr
    if case.line is not None:
        assert f"{case.location(path)}:" in stderr, stderr
    if case.field is not None:
        assert f": {case.field}:" in stderr or f"spec.{case.field}:" in stderr, stderr


@pytest.mark.scenario(AREA, "dataset corpus: at least 30 broken files, each with an expected non-retryable code")
def test_corpus_has_thirty_cases_and_every_file_has_one() -> None:
    committed = {p.name for p in CORPUS.iterdir() if p.name != "cases.yaml"}
    generated = {name for name, spec in CASES.items() if spec.get("generate")}
    assert committed == set(CASES) - generated
    assert len(CASES) >= 30
    assert {spec["code"] for spec in CASES.values()} <= NOT_RETRYABLE


@pytest.mark.scenario(AREA, "broken dataset → `sftjob data inspect` exits 2 naming file:line and field")
@pytest.mark.parametrize("dataset", PARAMS, indirect=True)
def test_inspect(dataset: Path, request: pytest.FixtureRequest, tiny_model_dir: Path, cli_debug: None) -> None:
    case = _case(request)
    code, out, err = _run_cli("data", "inspect", str(dataset), "--tokenizer", str(tiny_model_dir))
    assert code == 2, err
    _check_message(case, dataset, err, out)


@pytest.mark.scenario(AREA, "broken dataset → `sftjob validate` of a job naming it exits 2 naming file:line and field")
@pytest.mark.parametrize("dataset", PARAMS, indirect=True)
def test_validate(dataset: Path, request: pytest.FixtureRequest, tiny_model_dir: Path, tmp_path: Path,
                  cli_debug: None) -> None:
    case = _case(request)
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(_job_document(tiny_model_dir, dataset, tmp_path / "out")), encoding="utf-8")
    code, out, err = _run_cli("validate", str(job))
    assert code == 2, err
    _check_message(case, dataset, err, out)
    assert not (tmp_path / "out").exists()


@pytest.mark.scenario(AREA, "broken dataset → trainer preflight raises DataError with a non-retryable code")
@pytest.mark.parametrize("dataset", PARAMS, indirect=True)
def test_preflight(dataset: Path, request: pytest.FixtureRequest, tiny_tokenizer: Any) -> None:
    from sftjob_api.types import DatasetSpec
    from sftjob_trainer.data import DataError, prepare_dataset

    case = _case(request)
    with pytest.raises(DataError) as caught:
        prepare_dataset(DatasetSpec.model_validate({"train": {"uri": str(dataset)}}), tiny_tokenizer, seed=42)
    err = caught.value
    assert err.code == case.code
    assert err.code in NOT_RETRYABLE
    assert err.line == case.line
    assert err.field == case.field
    assert case.message in str(err)


@pytest.mark.scenario(AREA, "broken dataset → trainer run fails non-retryably, writes only a Failed progress.json; "
                      "the operator marks the job Failed without retrying")
@pytest.mark.parametrize("dataset", PARAMS, indirect=True)
def test_trainer_run_and_operator(dataset: Path, request: pytest.FixtureRequest, tiny_model_dir: Path,
                                  tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sftjob_api.types import SFTJob, SFTJobStatus
    from sftjob_operator.status import ProgressSnapshot, derive_status
    from sftjob_trainer.driver import run_job
    from sftjob_trainer.job_context import context_for
    from sftjob_trainer.trainer_error import TrainerError

    case = _case(request)
    output = tmp_path / "out"
    job = SFTJob.model_validate(_job_document(tiny_model_dir, dataset, output))
    ctx = context_for(job)

    def accepted(*_: Any) -> None:
        # A dataset the preflight lets through would start Ray Train next: stop here instead.
        raise AssertionError("the trainer preflight accepted the dataset")

    monkeypatch.setattr("sftjob_trainer.driver.plan_job", accepted)
    with pytest.raises(TrainerError) as caught:
        run_job(ctx)
    assert caught.value.code == case.code
    assert caught.value.retryable is False
    assert case.message in caught.value.message
    written = sorted(str(p.relative_to(output)) for p in output.rglob("*") if p.is_file())
    assert written == [f"broken-data/{PROGRESS_FILE}"]
    progress = ProgressFile.model_validate_json((Path(ctx.output_uri) / PROGRESS_FILE).read_text())
    assert progress.phase == "Failed" and progress.error is not None
    assert progress.error.code == case.code and progress.error.retryable is False

    # The operator's view: the attempt's RayJob failed and progress.json says why.
    now = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    namespaced = SFTJob.model_validate({**_job_document(tiny_model_dir, dataset, output),
                                        "metadata": {"name": "broken-data", "namespace": "ml", "uid": "u-1"}})
    running = derive_status(namespaced, SFTJobStatus(), generation=1, now=now, rayjob=None)
    rayjob = {"metadata": {"name": "broken-data-a1"}, "spec": {},
              "status": {"jobDeploymentStatus": "Complete", "jobStatus": "FAILED", "reason": "AppFailed"}}
    final = derive_status(namespaced, running.status, generation=1, now=now, rayjob=rayjob,
                          snapshot=ProgressSnapshot(progress=progress))
    assert final.create_attempt is None
    assert final.status.phase == "Failed"
    assert final.status.error is not None and final.status.error.code == case.code
    assert final.status.error.retryable is False
    assert [e.reason for e in final.events] == ["Failed"]


def _case(request: pytest.FixtureRequest) -> Case:
    case: Case = request.node.callspec.params["dataset"]
    return case


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir: Path) -> Any:
    """The tiny model's tokenizer, as the trainer loads it (a pad token that is not EOS)."""
    from sftjob_api.types import ModelSpec
    from sftjob_trainer.model_loading import load_tokenizer

    return load_tokenizer(tiny_model_dir, ModelSpec(source=str(tiny_model_dir)))
