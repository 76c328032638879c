"""`sftjob distill FILE`: bad input ends with exit 2 and one paragraph (no traceback); a Self-Instruct job runs
through the command against the fault-injecting teacher, prints its stats, and a rerun sends nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from distill_helpers import FakeTeacher, write_jsonl

from sftjob_cli.main import main


def _job_file(tmp_path: Path, distillation: dict[str, Any] | None, train: str = "distilled") -> Path:
    spec: dict[str, Any] = {"model": {"source": "/models/student"}, "dataset": {"train": {"uri": train}},
                            "output": {"uri": str(tmp_path / "out")}}
    if distillation is not None:
        spec["distillation"] = distillation
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "sftjob.dev/v1alpha1", "kind": "SFTJob",
                                    "metadata": {"name": "distill-cli"}, "spec": spec}, sort_keys=False))
    return path


TEACHER = {"endpoint": "http://127.0.0.1:9/v1", "model": "teacher"}


@pytest.mark.parametrize(("distillation", "train", "expected"), [
    ({"teacher": TEACHER, "prompts": {"uri": "p.jsonl"}, "samplesPerPrompt": 2, "temperature": 0}, "distilled",
     "job.yaml:19: spec.distillation.samplesPerPrompt: above 1 needs temperature above 0"),
    (None, "train.jsonl", "spec.distillation: not set, so there is nothing to generate"),
    ({"teacher": TEACHER, "prompts": {"uri": "p.jsonl"}}, "train.jsonl", "set dataset.train.uri: distilled"),
])
def test_bad_input_exits_2_with_one_paragraph(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              distillation: dict[str, Any] | None, train: str, expected: str) -> None:
    assert main(["distill", str(_job_file(tmp_path, distillation, train))]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_a_missing_prompts_file_is_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _job_file(tmp_path, {"teacher": TEACHER, "prompts": {"uri": str(tmp_path / "nowhere.jsonl")}})
    assert main(["distill", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "DatasetUnreadable (distillation.prompts.uri)" in err and "nowhere.jsonl" in err and "Traceback" not in err


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_self_instruct_through_the_command(fake_teacher: FakeTeacher, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    seeds = write_jsonl(tmp_path / "seeds.jsonl", [{"instruction": "Give three tips for staying healthy."},
                                                   {"instruction": "Explain why the sky is blue."},
                                                   {"prompt": "Name two uses of copper."}])
    path = _job_file(tmp_path, {"teacher": {"endpoint": fake_teacher.url, "model": "teacher", "concurrency": 4},
                                "prompts": {"generate": {"seedTasks": str(seeds), "count": 8,
                                                         "similarityThreshold": 0.9}},
                                "maxTokens": 64})
    assert main(["distill", str(path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "prompts: 8 (8 instructions grown by Self-Instruct)  answers kept: 8 of 8" in out
    assert "requests: 9 sent, 0 reused from the cache (miss " in out  # 1 list of 8 instructions + 8 answers
    listed = [s for s in fake_teacher.seen if "new tasks" in s.prompt]
    assert len(listed) == 1 and listed[0].body["temperature"] == 1.0  # instructions are sampled for diversity
    assert fake_teacher.max_in_flight() <= 4
    rows = [json.loads(line) for line in (tmp_path / "out" / "distill-cli" / "data" / "distilled.jsonl").open()]
    assert len({row["messages"][0]["content"] for row in rows}) == 8

    assert main(["distill", str(path), "--json"]) == 0  # a rerun: everything from the cache
    stats = json.loads(capsys.readouterr().out)
    assert stats["requests"] == 0 and stats["cachedRequests"] == 9 and stats["cache"].startswith("hit ")
    assert len(fake_teacher.seen) == 9
