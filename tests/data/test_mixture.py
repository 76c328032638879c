"""Weighted dataset mixtures and globs over shards: proportions, counts, seeds, the cache key, lazy shard reads,
local and S3 globs, clear errors, per-source tags and evaluation loss, and what `sftjob data` shows."""

from __future__ import annotations

import io
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from data_helpers import CliRunner, write_jsonl

from sftjob_api.field_problems import check_document
from sftjob_api.types import DatasetSpec
from sftjob_trainer.data import ByteTokenizer, DataCache, DataError, PreparedData, prepare_dataset
from sftjob_trainer.data.mixture import (
    VALIDATION_FILE_SOURCE,
    eval_loss_table,
    mixture_targets,
    per_source_eval_loss,
    with_eval_losses,
)
from support.crd_check import server_errors

TOKENIZER = ByteTokenizer()


def rows(tag: str, n: int, start: int = 0) -> list[dict[str, Any]]:
    """`n` distinct prompt/completion rows whose text names `tag` (so an example tells its source)."""
    return [{"prompt": f"{tag} question {i}?", "completion": f"{tag} answer {i}."} for i in range(start, start + n)]


def mixture(*sources: dict[str, Any], **fields: Any) -> DatasetSpec:
    return DatasetSpec.model_validate({"train": {"sources": list(sources)}, **fields})


def prepare(spec: DatasetSpec, seed: int = 42, cache: DataCache | None = None) -> PreparedData:
    return prepare_dataset(spec, TOKENIZER, seed=seed, cache=cache)


def tag_of(reference: str) -> str:
    return reference.split(" ", 1)[0]


@pytest.fixture
def three(tmp_path: Path) -> list[str]:
    """Three sources of 200, 500 and 300 rows (1000 in all): weights 0.5/0.3/0.2 repeat one and sample the others."""
    return [str(write_jsonl(tmp_path / f"{tag}.jsonl", rows(tag, n))) for tag, n in
            (("alpha", 200), ("beta", 500), ("gamma", 300))]


def test_weights_set_the_realised_proportions(three: list[str]) -> None:
    spec = mixture({"uri": three[0], "weight": 0.5}, {"uri": three[1], "weight": 0.3}, {"uri": three[2], "weight": 0.2},
                   validationSplit=0.1)
    prepared = prepare(spec)
    total = len(prepared.train)
    assert total == 900  # the weighted sources keep their size: 1000 rows less the 10% held out
    by_source = Counter(e.source for e in prepared.train)
    by_tag = Counter(tag_of(e.reference) for e in prepared.train)
    for index, (tag, weight) in enumerate((("alpha", 0.5), ("beta", 0.3), ("gamma", 0.2))):
        assert abs(by_source[index] / total - weight) <= 0.03
        assert by_tag[tag] == by_source[index]  # the tag is the source the example really came from
    report = {s.name: s for s in prepared.report.sources}
    assert [(s.available, s.train_examples, s.proportion) for s in report.values()] == [
        (180, 450, 0.5), (450, 270, 0.3), (270, 180, 0.2)]
    assert any("'alpha' has 180 usable examples and gives 450" in w for w in prepared.report.warnings)
    # The 180 distinct alpha examples are each repeated 2 or 3 times, never 1 or 4.
    repeats = Counter(tuple(e.input_ids) for e in prepared.train if e.source == 0)
    assert len(repeats) == 180 and set(repeats.values()) == {2, 3}
    # Downsampled sources draw without replacement.
    assert len({tuple(e.input_ids) for e in prepared.train if e.source == 1}) == 270
    stats = prepared.report.to_stats().to_wire()
    assert [(s["name"], s["trainExamples"], s["proportion"], s["weight"]) for s in stats["sources"]] == [
        ("alpha", 450, 0.5, 0.5), ("beta", 270, 0.3, 0.3), ("gamma", 180, 0.2, 0.2)]


def test_samples_are_exact_counts_and_weights_share_the_rest() -> None:
    sources = [
        DatasetSpec.model_validate({"train": {"sources": [{"uri": "a", "samples": 250}, {"uri": "b", "weight": 1},
                                                          {"uri": "c", "weight": 3}, {"uri": "d"}]}}).train.mixture()
    ][0]
    assert mixture_targets(sources, [100, 61, 39, 7]) == [250, 25, 75, 7]
    # Largest remainder: the counts add up to the weighted sources' size.
    assert sum(mixture_targets(sources[1:3], [50, 51])) == 101


def test_same_seed_same_mixture_other_seed_another(three: list[str]) -> None:
    spec = mixture({"uri": three[0], "weight": 2}, {"uri": three[1], "samples": 120}, {"uri": three[2], "weight": 1})

    def order(seed: int) -> list[tuple[int, tuple[int, ...]]]:
        return [(e.source, tuple(e.input_ids)) for e in prepare(spec, seed).train]

    first = order(7)
    assert first == order(7)
    other = order(8)
    assert other != first
    assert Counter(s for s, _ in other) == Counter(s for s, _ in first) == {0: 333, 2: 167, 1: 120}
    assert set(other) != set(first)  # another seed draws other examples, not only another order


def test_the_cache_key_follows_weights_and_seed(three: list[str], tmp_path: Path) -> None:
    cache = DataCache((str(tmp_path / "cache"),))
    spec = mixture({"uri": three[0], "weight": 0.5}, {"uri": three[1], "weight": 0.5})
    miss = prepare(spec, cache=cache).report.cache
    hit = prepare(spec, cache=cache)
    assert miss.startswith("miss ") and hit.report.cache == "hit " + miss.split()[1]
    assert [s.proportion for s in hit.report.sources] == [0.5, 0.5]
    assert all(e.source in (0, 1) for e in hit.train) and {e.source for e in hit.train} == {0, 1}
    reweighted = prepare(mixture({"uri": three[0], "weight": 0.7}, {"uri": three[1], "weight": 0.3}), cache=cache)
    reseeded = prepare(spec, seed=43, cache=cache)
    keys = {miss.split()[1], reweighted.report.cache.split()[1], reseeded.report.cache.split()[1]}
    assert reweighted.report.cache.startswith("miss ") and reseeded.report.cache.startswith("miss ") and len(keys) == 3
    assert [s.proportion for s in reweighted.report.sources] == [0.7, 0.3]


def test_a_local_glob_reads_every_shard_in_name_order(tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    (shards / "nested").mkdir(parents=True)
    for k in range(3):
        write_jsonl(shards / f"part-{k}.jsonl", rows(f"p{k}", 10))
    write_jsonl(shards / "other.jsonl", rows("other", 10))
    write_jsonl(shards / "nested" / "part-9.jsonl", rows("deep", 5))
    (shards / "part-3.jsonl").write_text("")  # an empty shard, as writers leave them: skipped
    spec = DatasetSpec.model_validate({"train": {"uri": f"{shards}/part-*.jsonl"}})
    prepared = prepare(spec)
    assert prepared.report.rows == 30 and prepared.report.file == f"{shards}/part-*.jsonl"
    assert [tag_of(e.reference) for e in prepared.train] == ["p0"] * 10 + ["p1"] * 10 + ["p2"] * 10
    assert prepared.report.sources == [] and prepared.report.to_stats().sources is None
    digest = prepared.report.sha256
    write_jsonl(shards / "part-1.jsonl", rows("p1", 10, start=100))
    assert prepare(spec).report.sha256 != digest
    recursive = prepare(DatasetSpec.model_validate({"train": {"uri": f"{shards}/**/part-*.jsonl"}}))
    assert recursive.report.rows == 35


def test_a_sample_of_a_large_glob_reads_only_some_shards(tmp_path: Path) -> None:
    for k in range(10):
        write_jsonl(tmp_path / f"shard-{k:02d}.jsonl", rows(f"s{k}", 40))
    write_jsonl(tmp_path / "small.jsonl", rows("small", 20))
    spec = mixture({"uri": f"{tmp_path}/shard-*.jsonl", "samples": 30, "name": "big"},
                   {"uri": str(tmp_path / "small.jsonl")})
    chosen = set()
    for seed in range(4):
        prepared = prepare(spec, seed=seed)
        big = prepared.report.sources[0]
        assert (big.files, big.files_matched, big.rows, big.train_examples) == (1, 10, 40, 30)
        assert prepared.report.sources[1].train_examples == 20  # neither weight nor samples: every row once
        tags = {tag_of(e.reference) for e in prepared.train if e.source == 0}
        assert len(tags) == 1
        chosen |= tags
    assert len(chosen) > 1  # which shard is read depends on the seed


def test_an_s3_glob_of_parquet_shards(s3_env: Any, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    bucket = s3_env.create_bucket("mixture-shards")
    client = s3_env.client()
    for k in range(3):
        sink = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows(f"chat{k}", 20)), sink)
        client.put_object(Bucket="mixture-shards", Key=f"data/chat/part-{k}.parquet", Body=sink.getvalue())
    client.put_object(Bucket="mixture-shards", Key="data/chat/_SUCCESS", Body=b"")
    client.put_object(Bucket="mixture-shards", Key="data/code.jsonl",
                      Body="".join(json.dumps(r) + "\n" for r in rows("code", 40)).encode())
    spec = mixture({"uri": f"{bucket}/data/chat/*.parquet", "weight": 3}, {"uri": f"{bucket}/data/code.jsonl",
                                                                            "weight": 1})
    prepared = prepare(spec)
    chat, code = prepared.report.sources
    assert (chat.name, chat.files, chat.files_matched, chat.rows) == ("chat", 3, 3, 60)
    assert chat.format == "prompt_completion"
    assert (chat.train_examples, code.train_examples, chat.proportion, code.proportion) == (75, 25, 0.75, 0.25)
    with pytest.raises(DataError) as err:
        prepare(mixture({"uri": f"{bucket}/data/chat/*.jsonl", "weight": 1}, {"uri": f"{bucket}/data/code.jsonl"}))
    assert (err.value.code, err.value.field) == ("DatasetUnreadable", "dataset.train.sources[0].uri")
    assert "matches no file under s3://mixture-shards/data/chat (4 files there)" in str(err.value)


def test_an_empty_glob_names_the_field_and_what_to_do(three: list[str], tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        prepare(mixture({"uri": three[0], "weight": 1}, {"uri": f"{tmp_path}/missing/*.jsonl", "weight": 1}))
    assert (err.value.code, err.value.field, err.value.file) == (
        "DatasetUnreadable", "dataset.train.sources[1].uri", f"{tmp_path}/missing/*.jsonl")
    assert "matches no file" in str(err.value) and "check the pattern" in str(err.value)
    with pytest.raises(DataError) as single:
        prepare(DatasetSpec.model_validate({"train": {"uri": f"{tmp_path}/*.parquet"}}))
    assert single.value.field == "dataset.train.uri" and "(3 files there)" in str(single.value)


def test_a_source_with_no_usable_row_fails_preflight(three: list[str], tmp_path: Path) -> None:
    empty = write_jsonl(tmp_path / "blank.jsonl", [{"prompt": f"q{i}", "completion": " "} for i in range(5)])
    with pytest.raises(DataError) as err:
        prepare(mixture({"uri": three[0], "weight": 1}, {"uri": str(empty), "weight": 1, "name": "blank"}))
    assert (err.value.code, err.value.field) == ("PreflightFailed", "dataset.train.sources[1]")
    assert "source 'blank' has no usable example" in str(err.value)


def _job(dataset: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "sftjob.dev/v1alpha1", "kind": "SFTJob", "metadata": {"name": "mix"},
            "spec": {"model": {"source": "hf://org/model"}, "dataset": dataset,
                     "output": {"uri": "s3://out-bucket/sft"}}}


@pytest.mark.parametrize(("train", "field", "message"), [
    ({"sources": [{"uri": "a.jsonl", "weight": 0}]}, "spec.dataset.train.sources[0].weight",
     "must be a positive number"),
    ({"sources": [{"uri": "a.jsonl", "weight": "lots"}]}, "spec.dataset.train.sources[0].weight",
     "to leave a source out, remove it"),
    ({"sources": [{"uri": "a.jsonl", "samples": 0.5}]}, "spec.dataset.train.sources[0].samples",
     "whole number of examples"),
    ({"sources": [{"uri": "a.jsonl", "weight": 1, "samples": 10}]}, "spec.dataset.train.sources[0].samples",
     "not both"),
    ({"uri": "a.jsonl", "sources": [{"uri": "b.jsonl"}]}, "spec.dataset.train.sources", "exactly one of them"),
    ({"sources": [{"uri": "a.jsonl", "name": "x"}, {"uri": "b.jsonl", "name": "x"}]}, "spec.dataset.train.sources",
     "unique"),
    ({"sources": [{"uri": "a.jsonl", "chatTemplate": "chatml"}]}, "spec.dataset.train.sources[0]",
     "chatTemplate: is set once for the whole dataset"),
])
def test_bad_mixtures_are_rejected_naming_the_field(train: dict[str, Any], field: str, message: str) -> None:
    job, problems = check_document(_job({"train": train}))
    assert job is None
    assert any(p.field == field and message in p.message for p in problems), problems
    if "chatTemplate" not in train["sources"][0]:  # the API server prunes an unknown field (kubectl rejects it)
        assert server_errors(_job({"train": train})), "the CRD admits it"


def test_the_crd_admits_a_mixture_and_the_old_single_file() -> None:
    good = {"train": {"sources": [{"uri": "s3://data-bucket/chat/*.parquet", "weight": 0.7, "name": "chat"},
                                  {"uri": "s3://data-bucket/code.jsonl", "samples": 500, "schema": "messages",
                                   "columnMap": {"conversation": "messages"}}]}, "validationSplit": 0.05}
    assert server_errors(_job(good)) == [] and check_document(_job(good))[1] == []
    assert server_errors(_job({"train": {"uri": "s3://data-bucket/train.jsonl"}})) == []


def test_per_source_schema_and_column_map(tmp_path: Path) -> None:
    chat = write_jsonl(tmp_path / "chat.jsonl", [{"conv": [{"role": "user", "content": f"hi {i}"},
                                                           {"role": "assistant", "content": f"chat hello {i}"}]}
                                                 for i in range(10)])
    plain = write_jsonl(tmp_path / "plain.jsonl", rows("plain", 10))
    prepared = prepare(mixture({"uri": str(chat), "columnMap": {"conv": "messages"}, "schema": "messages"},
                               {"uri": str(plain)}))
    assert [s.format for s in prepared.report.sources] == ["messages", "prompt_completion"]
    assert prepared.report.format == "messages+prompt_completion"
    assert Counter(e.source for e in prepared.train) == {0: 10, 1: 10}


def test_validation_is_tagged_by_source_for_per_source_eval_loss(three: list[str], tmp_path: Path) -> None:
    spec = mixture({"uri": three[0], "weight": 1}, {"uri": three[1], "weight": 1}, {"uri": three[2], "weight": 1},
                   validationSplit=0.1)
    prepared = prepare(spec)
    tags = ("alpha", "beta", "gamma")
    assert Counter(e.source for e in prepared.validation) == {0: 20, 1: 50, 2: 30}
    assert all(tag_of(e.reference) == tags[e.source] for e in prepared.validation)
    held = {tuple(e.input_ids) for e in prepared.validation}
    assert not held & {tuple(e.input_ids) for e in prepared.train}  # no repeated example on both sides
    # The driver scores each source's held-out examples; here a stand-in score: the mean length.
    losses = per_source_eval_loss(prepared.validation, lambda ex: sum(len(e) for e in ex) / len(ex))
    assert sorted(losses) == [0, 1, 2]
    assert losses[0] == pytest.approx(sum(len(e) for e in prepared.validation if e.source == 0) / 20)
    stats = with_eval_losses(prepared.report.to_stats(), {0: 1.25, 1: math.nan})
    assert [s.eval_loss for s in stats.sources or []] == [1.25, None, None]
    assert "| alpha | weight 1 | 300 | 33.3% | 1.2500 |" in eval_loss_table(stats)
    # A separate validation file belongs to no source.
    val = write_jsonl(tmp_path / "val.jsonl", rows("val", 4))
    with_file = prepare(mixture({"uri": three[0]}, {"uri": three[2]}, validation={"uri": str(val)}))
    assert {e.source for e in with_file.validation} == {VALIDATION_FILE_SOURCE}


def test_one_file_is_no_mixture(three: list[str]) -> None:
    prepared = prepare(DatasetSpec.model_validate({"train": {"uri": three[0]}, "validationSplit": 0.1}))
    assert prepared.report.sources == [] and prepared.report.to_stats().sources is None
    assert {e.source for e in prepared.train} == {e.source for e in prepared.validation} == {0}
    assert [tag_of(e.reference) for e in prepared.train] == ["alpha"] * 180


def test_sftjob_data_shows_the_mixture(three: list[str], tmp_path: Path, run_cli: CliRunner) -> None:
    job = _job({"train": {"sources": [{"uri": Path(three[0]).name, "weight": 0.5},
                                      {"uri": Path(three[1]).name, "weight": 0.3},
                                      {"uri": Path(three[2]).name, "weight": 0.2}]}, "validationSplit": 0.1})
    job["spec"]["hyperparameters"] = {"seed": 5}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    inspect = run_cli("data", "inspect", str(path))
    assert inspect.returncode == 0, inspect.stderr
    assert "mixture:" in inspect.stdout
    assert any(line.split()[:1] == ["alpha"] and "weight 0.5" in line and "50.0%" in line and "450" in line
               for line in inspect.stdout.splitlines()), inspect.stdout
    tokens = run_cli("data", "tokens", str(path))
    assert tokens.returncode == 0, tokens.stderr
    lines = [json.loads(line) for line in tokens.stdout.splitlines()]
    assert Counter(line["source"] for line in lines) == {"alpha": 450, "beta": 270, "gamma": 180}
    expected = [tuple(e.input_ids) for e in prepare(DatasetSpec.model_validate(
        {"train": {"sources": [{"uri": three[0], "weight": 0.5}, {"uri": three[1], "weight": 0.3},
                               {"uri": three[2], "weight": 0.2}]}, "validationSplit": 0.1}), seed=5).train]
    assert [tuple(line["input_ids"]) for line in lines] == expected  # the trainer's own examples, in its order
    validate = run_cli("validate", str(path))
    assert validate.returncode == 0, validate.stderr
    assert "alpha 450 (50.0%); beta 270 (30.0%); gamma 180 (20.0%)" in validate.stderr
