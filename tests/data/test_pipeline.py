"""The pipeline as a whole: length policy, quality filters, validation split, preflight, S3, inspect."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from data_helpers import FIXTURES, CliRunner, write_jsonl

from sftjob_api.types import DatasetSpec
from sftjob_trainer.data import IGNORE_INDEX, ByteTokenizer, DataError, prepare_dataset

TOK = ByteTokenizer()


def spec(path: Path | str, **fields: Any) -> DatasetSpec:
    return DatasetSpec.model_validate({"train": {"uri": str(path)}, **fields})


def chat_row(user: str, assistant: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


def test_quality_filters_are_counted(tmp_path: Path) -> None:
    rows = [chat_row(f"question {i}", f"answer {i}") for i in range(20)]
    rows += [chat_row("Question 3", "answer   3"),  # duplicate of row 4 after case and whitespace normalisation
             chat_row("blank", "  \n "),  # whitespace-only response
             {"messages": [{"role": "user", "content": "no reply"}]}]
    prepared = prepare_dataset(spec(write_jsonl(tmp_path / "d.jsonl", rows)), TOK, seed=0)
    report = prepared.report
    assert report.rows == 23 and report.train_examples == 20
    assert report.dropped == {"duplicate": 1, "empty_response": 1, "no_assistant_turn": 1}
    assert report.duplicates == 1
    kept = spec(tmp_path / "d.jsonl", dedup=False)
    assert prepare_dataset(kept, TOK, seed=0).report.train_examples == 21


def test_validation_split_is_seeded_and_disjoint(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [chat_row(f"q{i}", f"a{i}") for i in range(40)])
    first = prepare_dataset(spec(path, validationSplit=0.25), TOK, seed=7)
    again = prepare_dataset(spec(path, validationSplit=0.25), TOK, seed=7)
    other = prepare_dataset(spec(path, validationSplit=0.25), TOK, seed=8)
    assert len(first.validation) == 10 and len(first.train) == 30
    assert [e.line for e in first.validation] == [e.line for e in again.validation]
    assert [e.line for e in first.validation] != [e.line for e in other.validation]
    assert not {e.line for e in first.validation} & {e.line for e in first.train}
    assert first.report.validation_overlap == 0


def test_validation_file_overlap_is_reported(tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "t.jsonl", [chat_row(f"q{i}", f"a{i}") for i in range(10)])
    val = write_jsonl(tmp_path / "v.jsonl", [chat_row("Q1", "a1"), chat_row("new", "one")])
    prepared = prepare_dataset(spec(train, validation={"uri": str(val)}), TOK, seed=0)
    assert prepared.report.validation_overlap == 1
    assert len(prepared.validation) == 2
    assert "also occur in the training data" in prepared.report.warnings[0]


def test_overlong_examples_are_truncated_from_the_prompt_side(tmp_path: Path) -> None:
    rows = [chat_row(f"{'p' * 200} {i}", f"answer {i}") for i in range(2)]
    rows += [chat_row(f"q{i}", f"a{i}") for i in range(30)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    prepared = prepare_dataset(spec(path, maxSeqLength=64), TOK, seed=0)
    assert prepared.max_seq_length == 64
    assert prepared.report.truncated == 2 and prepared.report.dropped == {}
    long_ones = [e for e in prepared.train if e.line <= 2]
    for i, example in enumerate(long_ones):
        assert len(example.input_ids) == 64
        text = TOK.decode(example.input_ids)
        assert text.endswith(f"<|im_start|>assistant\nanswer {i}<|im_end|>\n")  # the response is intact
        trained = TOK.decode([t for t in example.labels if t != IGNORE_INDEX])
        assert trained == f"answer {i}<|im_end|>"
        assert TOK.decode(example.prompt_ids).endswith("<|im_start|>assistant\n")

    dropped = prepare_dataset(spec(path, maxSeqLength=64, overlong="drop"), TOK, seed=0)
    assert dropped.report.dropped == {"too_long": 2} and dropped.report.truncated == 0
    assert len(dropped.train) == 30


def test_auto_max_seq_length_without_packing_is_the_p99_capped_by_the_model(tmp_path: Path) -> None:
    # ChatML around a user turn of n bytes and the reply "a": 22 + n tokens.
    rows = [chat_row("q" * n, "a") for n in range(1, 201)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    prepared = prepare_dataset(spec(path, packing=False), TOK, seed=0)
    lengths = sorted(22 + n for n in range(1, 201))
    assert prepared.max_seq_length == lengths[197]  # nearest-rank p99 of 200 values: the 198th
    assert prepared.report.truncated == 2
    capped = prepare_dataset(spec(path, packing=False, maxDroppedFraction=1.0), TOK, seed=0, model_max_length=100)
    assert capped.max_seq_length == 100


def test_auto_max_seq_length_with_packing_keeps_every_row_that_fits_the_model(tmp_path: Path) -> None:
    # Packed, a long row costs only its own tokens: no row is truncated or dropped to spare the others.
    rows = [chat_row("q" * n, "a") for n in range(1, 201)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    prepared = prepare_dataset(spec(path), TOK, seed=0)
    assert prepared.max_seq_length == 22 + 200
    assert prepared.report.truncated == 0 and prepared.report.dropped == {}
    assert len(prepared.train) == 200
    capped = prepare_dataset(spec(path, maxDroppedFraction=1.0), TOK, seed=0, model_max_length=100)
    assert capped.max_seq_length == 100 and capped.report.truncated == 200 - (100 - 22)


def test_preflight_refuses_when_too_much_is_truncated(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [chat_row("x" * 100 + str(i), "y") for i in range(10)])
    with pytest.raises(DataError) as caught:
        prepare_dataset(spec(path, maxSeqLength=32), TOK, seed=0)
    err = caught.value
    assert err.code == "PreflightFailed" and err.field == "dataset.maxDroppedFraction"
    assert "100% of the rows were dropped or truncated" in str(err)


def test_preflight_refuses_when_eos_is_never_trained(tmp_path: Path, tiny_tokenizer: Any) -> None:
    # The tiny tokenizer has no <|eot_id|> token: the llama3 template's end of turn would be 8 plain tokens.
    path = FIXTURES / "golden_messages.jsonl"
    with pytest.raises(DataError) as caught:
        prepare_dataset(spec(path, chatTemplate="llama3"), tiny_tokenizer, seed=0)
    assert caught.value.code == "PreflightFailed"
    assert "no EOS or end-of-turn token carries loss" in str(caught.value)
    assert "<|eot_id|> is not a single token" in str(caught.value)
    ok = prepare_dataset(spec(path), tiny_tokenizer, seed=0)  # ChatML: <|im_end|> is this tokenizer's EOS
    assert ok.report.eos_trained and ok.stop_token_ids[0] == tiny_tokenizer.eos_token_id


def test_preflight_refuses_zero_trainable_examples(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [chat_row("q", " ")] * 3)
    with pytest.raises(DataError) as caught:
        prepare_dataset(spec(path), TOK, seed=0)
    assert caught.value.code == "PreflightFailed"
    assert "no training examples are left" in str(caught.value)


def test_invalid_rows_refuse_the_job_with_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join([json.dumps(chat_row("a", "b")), json.dumps({"messages": "oops"}),
                               json.dumps({"messages": [{"role": "robot", "content": "x"}]})]) + "\n")
    with pytest.raises(DataError) as caught:
        prepare_dataset(spec(path), TOK, seed=0)
    err = caught.value
    assert err.code == "InvalidDataset" and (err.file, err.line, err.field) == (str(path), 2, "messages")
    assert [(p.line, p.field) for p in err.problems] == [(2, "messages"), (3, "messages[0].role")]
    assert str(err).endswith("(and 1 more problem)")


def test_missing_file_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(DataError) as caught:
        prepare_dataset(spec(tmp_path / "absent.jsonl"), TOK, seed=0)
    assert caught.value.code == "DatasetUnreadable"


def test_s3_and_local_give_the_same_examples(tmp_path: Path, s3_env: Any, tiny_tokenizer: Any,
                                             run_cli: CliRunner) -> None:
    local = FIXTURES / "golden_sharegpt.jsonl"
    bucket = s3_env.create_bucket("sftjob-data")
    s3_env.client().put_object(Bucket="sftjob-data", Key="chat/train.jsonl", Body=local.read_bytes())
    uri = f"{bucket}/chat/train.jsonl"
    from_s3 = prepare_dataset(spec(uri), tiny_tokenizer, seed=3)
    from_disk = prepare_dataset(spec(local), tiny_tokenizer, seed=3)
    assert from_s3.train == from_disk.train and len(from_s3.train) == 3
    assert from_s3.report.sha256 == from_disk.report.sha256
    result = run_cli("data", "inspect", uri, "--json", env=s3_env.env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["rows"] == 3
    with pytest.raises(DataError) as caught:
        prepare_dataset(spec(f"{bucket}/absent.jsonl"), tiny_tokenizer, seed=3)
    assert caught.value.code == "DatasetUnreadable"


def test_inspect_human_output(run_cli: CliRunner, tiny_model_dir: Path) -> None:
    result = run_cli("data", "inspect", str(FIXTURES / "golden_messages.jsonl"))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "format:      messages    chat template: chatml" in out
    assert "byte-level fallback" in out
    assert "dropped:     none" in out and "p50" in out and "p95" in out and "max" in out
    assert "[[Hello!<|im_end|>]]" in out  # trained tokens marked
    assert out.count("--- example") == 2
    with_tokenizer = run_cli("data", "inspect", str(FIXTURES / "golden_messages.jsonl"), "--tokenizer",
                             str(tiny_model_dir), "--json")
    report = json.loads(with_tokenizer.stdout)
    for key in ("format", "rows", "dropped", "tokens", "trainable_tokens", "truncated", "duplicates", "errors"):
        assert key in report
    assert report["tokenizer"] != "" and "fallback" not in report["tokenizer"]
    assert report["rows"] == 3 and report["errors"] == [] and 0 < report["trainable_tokens"] < report["tokens"]


def write_job(directory: Path, name: str, model: Path) -> Path:
    """A job over `directory`/train.jsonl (relative to the job file) that tolerates half its rows dropped."""
    job = directory / "job.yaml"
    job.write_text(f"""apiVersion: sftjob.dev/v1alpha1
kind: SFTJob
metadata:
  name: {name}
spec:
  model:
    source: {model}
  dataset:
    train:
      uri: train.jsonl
    maxDroppedFraction: 0.5
  output:
    uri: {directory / 'out'}
""", encoding="utf-8")
    return job


def test_validate_checks_a_readable_dataset(tmp_path: Path, run_cli: CliRunner, tiny_model_dir: Path) -> None:
    write_jsonl(tmp_path / "train.jsonl", [chat_row("q", "   ")] * 2 + [chat_row("q2", "a")])
    job = write_job(tmp_path, "mostly-empty", tiny_model_dir)
    result = run_cli("validate", str(job))
    assert result.returncode == 2
    # The share of dropped rows is a property of the data as a whole: it points at the governing setting.
    assert f"{job}:11: spec.dataset.maxDroppedFraction: 67% of the rows were dropped" in result.stderr
    assert "fix the data or raise maxDroppedFraction" in result.stderr
    assert "Traceback" not in result.stderr


def test_validate_says_how_many_rows_each_filter_dropped(tmp_path: Path, run_cli: CliRunner,
                                                         tiny_model_dir: Path) -> None:
    # 5 distinct rows, 3 exact duplicates of the first and 1 with an empty answer: 5 examples are left.
    rows = [chat_row(f"question {n}", f"answer {n}") for n in range(5)]
    write_jsonl(tmp_path / "train.jsonl", rows + [rows[0]] * 3 + [chat_row("q", "   ")])
    job = write_job(tmp_path, "with-duplicates", tiny_model_dir)
    result = run_cli("validate", str(job))
    assert result.returncode == 0, result.stderr
    assert "dataset train.jsonl: messages, 5 examples (dropped: 3 duplicate, 1 empty response), " in result.stderr


def test_when_every_row_is_dropped_the_error_names_the_lines_and_reasons(tmp_path: Path) -> None:
    rows = [chat_row("a" * 200, "b" * 100), chat_row("q", "  "), chat_row("x" * 300, "y" * 100),
            {"messages": [{"role": "user", "content": "no reply"}]}, chat_row("q", "  ")]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError) as caught:
        prepare_dataset(spec(path, maxSeqLength=64, maxDroppedFraction=1.0), TOK, seed=0)
    err = caught.value
    assert err.code == "PreflightFailed" and err.field == "dataset.train"
    message = str(err)
    assert "every row was dropped" in message
    assert "response_too_long (the answer alone is longer than maxSeqLength 64): lines 1, 3" in message
    assert "empty_response (an assistant turn is empty): lines 2, 5" in message
    assert "no_assistant_turn (no assistant turn): line 4" in message


def test_weight_zero_turns_carry_no_loss_and_rows_without_a_trained_turn_are_dropped(tmp_path: Path) -> None:
    # OpenAI's fine-tuning guide: the first answer is context (weight 0), the second is trained.
    marv = {"messages": [{"role": "system", "content": "Marv is a factual chatbot that is also sarcastic."},
                         {"role": "user", "content": "What's the capital of France?"},
                         {"role": "assistant", "content": "Paris", "weight": 0},
                         {"role": "user", "content": "Can you be more sarcastic?"},
                         {"role": "assistant", "content": "Paris, as if everyone doesn't know that already.",
                          "weight": 1}]}
    context_only = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello",
                                                                     "weight": 0}]}
    path = write_jsonl(tmp_path / "d.jsonl", [marv, context_only])
    prepared = prepare_dataset(spec(path, maxDroppedFraction=0.5), TOK, seed=0)
    assert prepared.report.dropped == {"no_trained_turn": 1}
    [example] = prepared.train
    trained = TOK.decode([t for t, label in zip(example.input_ids, example.labels, strict=True)
                          if label != IGNORE_INDEX])
    assert trained == "Paris, as if everyone doesn't know that already.<|im_end|>"
    everything = prepare_dataset(spec(path, trainOn="all"), TOK, seed=0)  # all means every token
    assert len(everything.train) == 2 and IGNORE_INDEX not in everything.train[0].labels


def test_rows_that_differ_only_in_their_tools_are_not_duplicates(tmp_path: Path) -> None:
    tool = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}
    rows = [chat_row("q", "a"), {**chat_row("q", "a"), "tools": [tool]}, {**chat_row("q", "a"), "tools": [tool]}]
    prepared = prepare_dataset(spec(write_jsonl(tmp_path / "d.jsonl", rows), maxDroppedFraction=0.5), TOK, seed=0)
    assert prepared.report.duplicates == 1 and len(prepared.train) == 2
    assert "weather" in TOK.decode(prepared.train[1].input_ids) and "weather" not in TOK.decode(
        prepared.train[0].input_ids)


def test_reasoning_drop_removes_it_before_duplicates_are_counted(tmp_path: Path) -> None:
    rows = [{"messages": [{"role": "user", "content": "2+2?"},
                          {"role": "assistant", "content": "4", "reasoning_content": thought}]}
            for thought in ("Two and two.", "Count: 1, 2, 3, 4.")]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    kept = prepare_dataset(spec(path), TOK, seed=0)
    assert len(kept.train) == 2 and "<think>\nTwo and two.\n</think>\n\n4<|im_end|>" in TOK.decode(
        kept.train[0].input_ids)
    dropped = prepare_dataset(spec(path, reasoning="drop", maxDroppedFraction=0.5), TOK, seed=0)
    assert dropped.report.duplicates == 1 and len(dropped.train) == 1
    assert "<think>" not in TOK.decode(dropped.train[0].input_ids)
