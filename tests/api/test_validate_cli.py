"""`sftjob validate`: every problem as `file:line: field: message`, exit 2, never a traceback."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SFTJOB = REPO / ".venv" / "bin" / "sftjob"
CORPUS = sorted((REPO / "tests" / "corpus" / "sftjobs").glob("*.yaml"))
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


def _validate(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SFTJOB), "validate", *args], capture_output=True, text=True, input=stdin)


def _expectation(path: Path) -> str:
    header = dict(
        line[2:].split(": ", 1) for line in path.read_text().splitlines() if line.startswith("# expect-")
    )
    return header["expect-field"]


def test_corpus_is_large_enough() -> None:
    assert len(CORPUS) >= 40


@pytest.mark.parametrize("case", CORPUS, ids=lambda p: p.stem)
def test_invalid_document_names_the_field(case: Path) -> None:
    result = _validate(str(case))
    assert result.returncode == 2, result.stderr
    assert _expectation(case) in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for line in result.stderr.strip().splitlines():
        assert line.startswith(f"{case}:"), line


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_examples_are_valid(example: Path) -> None:
    result = _validate(str(example))
    assert result.returncode == 0, result.stderr
    assert "1 document valid" in result.stdout


def test_line_numbers_point_at_the_field() -> None:
    text = (REPO / "examples" / "lora-chat.yaml").read_text().replace("type: lora", "type: lorra")
    result = _validate("-", stdin=text)
    line = next(i for i, t in enumerate(text.splitlines(), start=1) if "type: lorra" in t)
    assert f"-:{line}: spec.method.type:" in result.stderr
    assert "got 'lorra'" in result.stderr


def test_every_problem_is_reported_not_just_the_first() -> None:
    text = (REPO / "examples" / "prompt-completion.yaml").read_text()
    text = text.replace("epochs: 3", "epochs: -1").replace("batchSize: 16", "batchSize: zero")
    result = _validate("-", stdin=text)
    assert "spec.hyperparameters.epochs" in result.stderr
    assert "spec.hyperparameters.batchSize" in result.stderr


def test_multi_document_file_names_the_document(tmp_path: Path) -> None:
    good = (REPO / "examples" / "qlora.yaml").read_text()
    bad = good.replace("bits: 4", "bits: 8").replace("name: llama-qlora-alpaca", "name: second")
    path = tmp_path / "two.yaml"
    path.write_text(good + "---\n" + bad)
    result = _validate(str(path))
    assert result.returncode == 2
    assert "document 2: spec.method.quantization.bits" in result.stderr
    assert "document 1" not in result.stderr


def test_missing_file_is_invalid_input(tmp_path: Path) -> None:
    result = _validate(str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert result.stderr.strip() == f"{tmp_path / 'nope.yaml'}: no such file"


def test_non_utf8_file_is_invalid_input(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("apiVersion: sftjob.dev/v1alpha1\nkind: SFTJob # caf\xe9\n".encode("latin-1"))
    result = _validate(str(path))
    assert result.returncode == 2
    assert "not valid UTF-8" in result.stderr
    assert "Traceback" not in result.stderr
