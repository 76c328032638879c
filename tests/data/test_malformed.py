"""Malformed datasets through the real command line: a clear file:line error, exit code 2, no traceback.

Each case runs twice: `sftjob data inspect FILE` and `sftjob validate job.yaml` for a job that names FILE.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from data_helpers import CliRunner

# A 10 MB single line: far above the 4 MiB per-row limit.
HUGE = 10 * 1000 * 1000
GOOD = json.dumps({"prompt": "Q?", "completion": " A."})

CASES: dict[str, tuple[bytes, str]] = {
    "invalid-json": (f"{GOOD}\n{{\"prompt\": \"Q\", \"completion\": }}\n".encode(), ":2: invalid JSON at column"),
    "missing-field": (f"{GOOD}\n{json.dumps({'prompt': 'only a prompt'})}\n".encode(),
                      ":2: completion: required field is missing"),
    "missing-message-content": (
        (json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}) + "\n"
         + json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant"}]}) + "\n").encode(),
        ":2: messages[1].content: required field is missing"),
    "wrong-type": (f"{GOOD}\n{GOOD}\n{json.dumps({'prompt': 5, 'completion': 'x'})}\n".encode(),
                   ":3: prompt: expected a string, got a number"),
    "non-utf8": (GOOD.encode() + b"\n" + b'{"prompt": "caf\xe9", "completion": " x"}\n', ":2: byte 16 of the line"),
    "empty-file": (b"", ":1: the file is empty"),
    "unknown-schema": (json.dumps({"question": "Q?", "answer": "A"}).encode() + b"\n",
                       ":1: schema: cannot detect the dataset format from the columns (answer, question)"),
    "huge-line": (b'{"prompt": "' + b"x" * HUGE + b'", "completion": "y"}\n',
                  ":1: the row is 10.0 MB, more than the 4 MiB limit per row"),
}


def _check(result_stderr: str, result_stdout: str, returncode: int, path: Path, expected: str) -> None:
    assert returncode == 2, result_stderr
    assert f"{path}{expected}" in result_stderr
    assert "Traceback" not in result_stderr + result_stdout
    assert len(result_stderr) < 5000  # one paragraph per problem, not a dump of the huge row


@pytest.mark.parametrize("case", sorted(CASES))
def test_inspect_reports_file_line(tmp_path: Path, run_cli: CliRunner, case: str) -> None:
    content, expected = CASES[case]
    path = tmp_path / f"{case}.jsonl"
    path.write_bytes(content)
    result = run_cli("data", "inspect", str(path))
    _check(result.stderr, result.stdout, result.returncode, path, expected)


@pytest.mark.parametrize("case", sorted(CASES))
def test_validate_runs_the_dataset_preflight(tmp_path: Path, run_cli: CliRunner, case: str) -> None:
    content, expected = CASES[case]
    path = tmp_path / f"{case}.jsonl"
    path.write_bytes(content)
    job = tmp_path / "job.yaml"
    job.write_text(f"""apiVersion: sftjob.dev/v1alpha1
kind: SFTJob
metadata:
  name: bad-data
spec:
  model:
    source: models/absent
  dataset:
    train:
      uri: {path}
  output:
    uri: {tmp_path / 'out'}
""", encoding="utf-8")
    result = run_cli("validate", str(job))
    _check(result.stderr, result.stdout, result.returncode, path, expected)


def test_inspect_json_lists_the_errors(tmp_path: Path, run_cli: CliRunner) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(CASES["wrong-type"][0])
    result = run_cli("data", "inspect", str(path), "--json")
    assert result.returncode == 2
    report = json.loads(result.stdout)
    assert report["errors"] == [{"file": str(path), "line": 3, "field": "prompt",
                                 "message": "expected a string, got a number"}]
    assert report["rows"] == 3 and report["dropped"]["invalid"] == 1


def test_unknown_schema_option(tmp_path: Path, run_cli: CliRunner) -> None:
    path = tmp_path / "ok.jsonl"
    path.write_text(GOOD + "\n", encoding="utf-8")
    result = run_cli("data", "inspect", str(path), "--schema", "chatml")
    assert result.returncode == 2
    assert "--schema: unknown schema 'chatml'; one of: auto, prompt_completion" in result.stderr
    assert "Traceback" not in result.stderr
