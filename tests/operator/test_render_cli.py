"""`sftjob render job.yaml [--attempt N]` prints exactly what build_rayjob builds."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sftjob_api.field_problems import check_document
from sftjob_cli.main import main
from sftjob_operator.rayjob import build_rayjob
from sftjob_operator.settings import Settings
from support.operator_env import REPO

EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_render_prints_the_operators_rayjob(example: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", str(example), "--attempt", "2"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    job, _ = check_document(yaml.safe_load(example.read_text()))
    assert job is not None
    assert printed == build_rayjob(job, 2, Settings())
    assert printed["metadata"]["name"].endswith("-a2")


def test_render_uses_the_operators_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SFTJOB_TRAINER_IMAGE", "registry.example/trainer:7")
    assert main(["render", str(EXAMPLES[0])]) == 0
    assert "registry.example/trainer:7" in capsys.readouterr().out


def test_render_several_documents(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    both = tmp_path / "both.yaml"
    both.write_text("\n---\n".join(p.read_text() for p in EXAMPLES[:2]))
    assert main(["render", str(both)]) == 0
    assert len([d for d in yaml.safe_load_all(capsys.readouterr().out) if d]) == 2


def test_render_rejects_invalid_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: sftjob.dev/v1alpha1\nkind: SFTJob\nmetadata: {name: x}\n"
        "spec:\n  model: {source: hf://a/b}\n  dataset: {train: {uri: /d}}\n  output: {uri: /o}\n"
        "  runPolicy: {queueName: 'not a label'}\n"
    )
    assert main(["render", str(bad)]) == 2
    assert f"{bad}:8: spec.runPolicy.queueName" in capsys.readouterr().err
    bad.write_text("apiVersion: sftjob.dev/v1alpha1\nkind: SFTJob\nmetadata: {name: x}\nspec: {}\n")
    assert main(["render", str(bad)]) == 2
    assert main(["render", str(EXAMPLES[0]), "--attempt", "0"]) == 2
