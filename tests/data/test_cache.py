"""Prepared data cached by content hash: hits skip tokenization and return the same data; any change misses;
a damaged entry is rebuilt; local directories and s3:// alike."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from data_helpers import write_jsonl

from sftjob_api.types import DatasetSpec
from sftjob_trainer.data import DataCache, DataError, PreparedData, encoding, pipeline, prepare_dataset
from sftjob_trainer.data import cache as data_cache

ROWS = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Question {i}?"},
                      {"role": "assistant", "content": f"Answer number {i}."}]} for i in range(30)]
INLINE_TEMPLATE = ("{%- for m in messages %}{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
                   "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts of the pipeline's tokenizer calls and builds in this test."""
    counts = {"encode": 0, "build": 0}

    def counting(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            counts[name] += 1
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(encoding, "encode", counting("encode", encoding.encode))
    monkeypatch.setattr(pipeline, "_build", counting("build", pipeline._build))
    return counts


def make_spec(path: Path | str, **fields: Any) -> DatasetSpec:
    return DatasetSpec.model_validate({"train": {"uri": str(path)}, "validationSplit": 0.2, **fields})


def snapshot(prepared: PreparedData) -> dict[str, Any]:
    """Everything a reader of PreparedData uses, with the report as JSON minus the cache note."""
    def examples(items: list[Any]) -> list[tuple[Any, ...]]:
        return [(e.input_ids, e.labels, e.prompt_ids, e.reference, e.line) for e in items]

    report = prepared.report.to_json()
    report.pop("cache")
    return {"train": examples(prepared.train), "validation": examples(prepared.validation), "report": report,
            "max_seq_length": prepared.max_seq_length, "chat_template": prepared.chat_template,
            "stop_token_ids": prepared.stop_token_ids}


def test_second_prepare_is_a_hit_with_identical_data_and_no_tokenization(tmp_path: Path, tiny_tokenizer: Any,
                                                                       calls: dict[str, int]) -> None:
    spec = make_spec(write_jsonl(tmp_path / "d.jsonl", ROWS))
    cache = DataCache((str(tmp_path / "cache"),))
    uncached = prepare_dataset(spec, tiny_tokenizer, seed=5)
    assert uncached.report.cache == ""
    first = prepare_dataset(spec, tiny_tokenizer, seed=5, cache=cache)
    assert calls == {"encode": 4, "build": 2}  # train and validation tokenized, for each of the two builds
    second = prepare_dataset(spec, tiny_tokenizer, seed=5, cache=cache)
    assert calls == {"encode": 4, "build": 2}
    key = first.report.cache.removeprefix("miss ")
    assert len(key) == data_cache.KEY_PREFIX_CHARS and first.report.cache == f"miss {key}"
    assert second.report.cache == f"hit {key}"
    assert snapshot(second) == snapshot(first) == snapshot(uncached)
    assert len(second.train) == 24 and len(second.validation) == 6
    assert all(isinstance(t, int) for t in second.train[0].input_ids + second.train[0].labels)
    assert second.report.to_stats().cache == f"hit {key}"
    entries = list((tmp_path / "cache").iterdir())
    assert len(entries) == 1 and entries[0].name.startswith(key)
    assert sorted(p.name for p in entries[0].iterdir()) == ["entry.json", "train.parquet", "validation.parquet"]


CHANGES: dict[str, Callable[[Path, Any, Any], tuple[DatasetSpec, Any, int]]] = {
    "one byte of the file": lambda path, tok, other: (
        make_spec(path.with_name("changed.jsonl").write_bytes(path.read_bytes().replace(b"Answer number 7.",
                                                                                          b"Answer number 8."))
                  and path.with_name("changed.jsonl")), tok, 5),
    "the chat template": lambda path, tok, other: (make_spec(path, chatTemplate=INLINE_TEMPLATE), tok, 5),
    "maxSeqLength": lambda path, tok, other: (make_spec(path, maxSeqLength=64), tok, 5),
    "the seed": lambda path, tok, other: (make_spec(path), tok, 6),
    "the tokenizer": lambda path, tok, other: (make_spec(path), other, 5),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_any_change_misses(change: str, tmp_path: Path, tiny_tokenizer: Any, system_tokenizer: Any) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    cache = DataCache((str(tmp_path / "cache"),))
    base = prepare_dataset(make_spec(path), tiny_tokenizer, seed=5, cache=cache)
    spec, tokenizer, seed = CHANGES[change](path, tiny_tokenizer, system_tokenizer)
    changed = prepare_dataset(spec, tokenizer, seed=seed, cache=cache)
    assert changed.report.cache.startswith("miss ")
    assert changed.report.cache != base.report.cache
    assert snapshot(changed) == snapshot(prepare_dataset(spec, tokenizer, seed=seed))
    assert prepare_dataset(spec, tokenizer, seed=seed, cache=cache).report.cache == changed.report.cache.replace(
        "miss", "hit")
    assert len(list((tmp_path / "cache").iterdir())) == 2


def _entry(root: Path) -> Path:
    (entry,) = root.iterdir()
    return entry


def _truncate_train(entry: Path) -> None:
    data = (entry / "train.parquet").read_bytes()
    (entry / "train.parquet").write_bytes(data[: len(data) // 2])


def _flip_byte_in_train(entry: Path) -> None:
    data = bytearray((entry / "train.parquet").read_bytes())
    data[len(data) // 3] ^= 0xFF  # same size, one byte of token data changed
    (entry / "train.parquet").write_bytes(bytes(data))


def _other_valid_tokens(entry: Path) -> None:
    examples = data_cache._from_parquet((entry / "train.parquet").read_bytes())
    examples[0].input_ids[-1] += 1  # a well-formed file that is not the one the index describes
    (entry / "train.parquet").write_bytes(data_cache._to_parquet(examples))


def _replace_train_with_matching_digest(entry: Path, columns: dict[str, list[Any]]) -> None:
    """A foreign writer's train.parquet whose size and digest entry.json does record."""
    import hashlib

    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pydict(columns, schema=data_cache._schema()), sink)
    data = sink.getvalue().to_pybytes()
    (entry / "train.parquet").write_bytes(data)
    index = json.loads((entry / "entry.json").read_text())
    index["files"]["train.parquet"].update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    (entry / "entry.json").write_text(json.dumps(index))


def _train_columns(entry: Path) -> dict[str, list[Any]]:
    import pyarrow.parquet as pq

    return pq.read_table(entry / "train.parquet").to_pydict()


def _labels_shorter_than_tokens(entry: Path) -> None:
    columns = _train_columns(entry)
    columns["labels"][3] = columns["labels"][3][:-1]
    _replace_train_with_matching_digest(entry, columns)


def _null_token(entry: Path) -> None:
    columns = _train_columns(entry)
    columns["input_ids"][0][0] = None
    _replace_train_with_matching_digest(entry, columns)


def _garbage_index(entry: Path) -> None:
    (entry / "entry.json").write_bytes(b'{"format": "sftjob-data-cache", "vers')


def _no_index(entry: Path) -> None:
    (entry / "entry.json").unlink()  # a writer that died after the data files


def _other_version(entry: Path) -> None:
    index = json.loads((entry / "entry.json").read_text())
    index["version"] = data_cache.PIPELINE_VERSION + 1
    (entry / "entry.json").write_text(json.dumps(index))


def _report_of_another_shape(entry: Path) -> None:
    index = json.loads((entry / "entry.json").read_text())
    index["report"]["injected"] = "x"
    (entry / "entry.json").write_text(json.dumps(index))


def _report_field_mistyped(entry: Path) -> None:
    index = json.loads((entry / "entry.json").read_text())
    index["report"]["tokens"] = "many"
    (entry / "entry.json").write_text(json.dumps(index))


def _counts_disagree(entry: Path) -> None:
    index = json.loads((entry / "entry.json").read_text())
    index["report"]["train_examples"] += 1
    (entry / "entry.json").write_text(json.dumps(index))


DAMAGE = {f.__name__.lstrip("_"): f for f in (_truncate_train, _flip_byte_in_train, _other_valid_tokens,
                                              _garbage_index, _no_index, _other_version, _report_of_another_shape,
                                              _report_field_mistyped, _counts_disagree, _labels_shorter_than_tokens,
                                              _null_token)}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_entry_is_rebuilt(damage: str, tmp_path: Path, tiny_tokenizer: Any,
                                    calls: dict[str, int]) -> None:
    spec = make_spec(write_jsonl(tmp_path / "d.jsonl", ROWS))
    cache = DataCache((str(tmp_path / "cache"),))
    first = prepare_dataset(spec, tiny_tokenizer, seed=5, cache=cache)
    DAMAGE[damage](_entry(tmp_path / "cache"))
    rebuilt = prepare_dataset(spec, tiny_tokenizer, seed=5, cache=cache)
    assert calls["build"] == 2
    assert rebuilt.report.cache == first.report.cache
    assert snapshot(rebuilt) == snapshot(first)
    again = prepare_dataset(spec, tiny_tokenizer, seed=5, cache=cache)
    assert calls["build"] == 2
    assert again.report.cache == first.report.cache.replace("miss", "hit")


def test_failing_data_is_not_cached(tmp_path: Path, tiny_tokenizer: Any) -> None:
    rows = [*ROWS[:3], {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                                     {"role": "user", "content": "and?"}]}]
    cache_dir = tmp_path / "cache"
    with pytest.raises(DataError):
        prepare_dataset(make_spec(write_jsonl(tmp_path / "d.jsonl", rows)), tiny_tokenizer, seed=5,
                        cache=DataCache((str(cache_dir),)))
    assert not cache_dir.exists()


def test_an_entry_found_later_is_copied_to_the_earlier_roots(tmp_path: Path, tiny_tokenizer: Any) -> None:
    spec = make_spec(write_jsonl(tmp_path / "d.jsonl", ROWS))
    local, shared = tmp_path / "local", tmp_path / "shared"
    stored = prepare_dataset(spec, tiny_tokenizer, seed=5, cache=DataCache((str(shared),)))
    hit = prepare_dataset(spec, tiny_tokenizer, seed=5, cache=DataCache((str(local), str(shared))))
    assert hit.report.cache.startswith("hit ")
    assert sorted(p.name for p in _entry(local).iterdir()) == sorted(p.name for p in _entry(shared).iterdir())
    only_local = prepare_dataset(spec, tiny_tokenizer, seed=5, cache=DataCache((str(local),)))
    assert only_local.report.cache.startswith("hit ")
    assert snapshot(only_local) == snapshot(stored)


def test_an_unwritable_cache_costs_a_warning_not_the_job(tmp_path: Path, tiny_tokenizer: Any) -> None:
    spec = make_spec(write_jsonl(tmp_path / "d.jsonl", ROWS))
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    prepared = prepare_dataset(spec, tiny_tokenizer, seed=5, cache=DataCache((str(blocker / "cache"),)))
    assert prepared.report.cache.startswith("miss ")
    assert len(prepared.train) == 24
    assert [w for w in prepared.report.warnings if "could not be written" in w] != []


def test_cache_on_s3(tmp_path: Path, tiny_tokenizer: Any, s3_env: Any, calls: dict[str, int]) -> None:
    bucket = s3_env.create_bucket("data-cache")
    spec = make_spec(write_jsonl(tmp_path / "d.jsonl", ROWS))
    cache = DataCache((f"{bucket}/job/cache/data",))
    first = prepare_dataset(spec, tiny_tokenizer, seed=5, cache=cache)
    second = prepare_dataset(spec, tiny_tokenizer, seed=5, cache=cache)
    assert calls["build"] == 1
    assert second.report.cache == first.report.cache.replace("miss", "hit")
    assert snapshot(second) == snapshot(first)
    client = s3_env.client()
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket="data-cache")["Contents"])
    assert [k.rsplit("/", 1)[1] for k in keys] == ["entry.json", "train.parquet", "validation.parquet"]
    train_key = next(k for k in keys if k.endswith("train.parquet"))
    client.put_object(Bucket="data-cache", Key=train_key, Body=b"PAR1 not really")
    rebuilt = prepare_dataset(spec, tiny_tokenizer, seed=5, cache=cache)
    assert calls["build"] == 2
    assert snapshot(rebuilt) == snapshot(first)


def test_job_cache_roots(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(data_cache.CACHE_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert DataCache.for_job("s3://b/out/ns/job").roots == (str(tmp_path / ".cache" / "sftjob" / "data"),
                                                             "s3://b/out/ns/job/cache/data")
    monkeypatch.setenv(data_cache.CACHE_ENV, str(tmp_path / "mine"))
    assert DataCache.for_job("/out/job").roots == (str(tmp_path / "mine"), "/out/job/cache/data")
    monkeypatch.setenv(data_cache.CACHE_ENV, "off")
    assert DataCache.for_job("/out/job").roots == ("/out/job/cache/data",)


def test_a_retried_job_in_a_fresh_pod_reuses_the_data_from_its_output(
        tmp_path: Path, tiny_model_dir: Path, s3_env: Any, monkeypatch: pytest.MonkeyPatch,
        calls: dict[str, int]) -> None:
    from sftjob_api.types import SFTJob
    from sftjob_trainer.job_context import context_for
    from sftjob_trainer.preparation import prepare
    from sftjob_trainer.reporting import ProgressWriter

    monkeypatch.setenv(data_cache.CACHE_ENV, "off")  # a fresh pod: nothing cached on the machine
    bucket = s3_env.create_bucket("retried-job")
    job = SFTJob.model_validate({
        "apiVersion": "sftjob.dev/v1alpha1", "kind": "SFTJob",
        "metadata": {"name": "retried", "namespace": "ml"},
        "spec": {"model": {"source": str(tiny_model_dir)},
                 "dataset": {"train": {"uri": str(write_jsonl(tmp_path / "d.jsonl", ROWS))}, "validationSplit": 0.2},
                 "output": {"uri": f"{bucket}/out"}},
    })
    reports = []
    for attempt in (1, 2):
        ctx = context_for(job, attempt)
        prepared, _, _ = prepare(ctx, ProgressWriter(ctx.output_uri, attempt))
        reports.append(prepared.report)
    assert calls["build"] == 1
    key = reports[0].cache.removeprefix("miss ")
    assert reports[1].cache == f"hit {key}"
    assert reports[1].to_stats().cache == f"hit {key}"
    listed = s3_env.client().list_objects_v2(Bucket="retried-job", Prefix="out/ml/retried/cache/data/")["Contents"]
    assert {o["Key"].split("/")[-1] for o in listed} == {"entry.json", "train.parquet", "validation.parquet"}
    assert all(o["Key"].split("/")[-2].startswith(key) for o in listed)
