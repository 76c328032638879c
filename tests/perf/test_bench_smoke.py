"""Each bench runs at a tiny size, so none can rot. Speed is never asserted: only that it ran and measured."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_train_throughput_tiny(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "train_throughput.py"), "--scale", "tiny", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    for config in ("A", "A2", "B", "ours"):
        assert f"| {config} |" in out
    assert "ours/A trained tok/s = " in out and "ours/B trained tok/s = " in out
    stats = json.loads((tmp_path / "assets-tiny" / "length_stats.json").read_text())
    assert stats["examples"] == 48


@pytest.mark.slow
def test_ray_overhead_tiny(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "ray_overhead.py"), "--scale", "tiny", "--workers", "1",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| plain | 1 |" in result.stdout and "| ray | 1 |" in result.stdout
    assert "`ray.init()` alone in a fresh process:" in result.stdout


def test_ray_overhead_pairs_each_round_with_its_plain_run() -> None:
    sys.path.insert(0, str(REPO))
    from bench.ray_overhead import paired_ratio

    plain = [{"steady_tok_s": v} for v in (800.0, 700.0, 750.0)]
    ray = [{"steady_tok_s": v} for v in (720.0, 693.0, 735.0)]  # 0.90, 0.99, 0.98 of their rounds' plain
    assert paired_ratio(ray, plain) == pytest.approx(0.98)
    assert math.isnan(paired_ratio([{"steady_tok_s": float("nan")}], [{"steady_tok_s": 1.0}]))  # tiny: no steps


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


@pytest.mark.slow
def test_gpu_suite_tiny_shapes_on_cpu(tmp_path: Path) -> None:
    """The GPU suite's own code (assets, our trainer per row, timing, MFU, table) at shrunken shapes on CPU."""
    import importlib.util
    import math

    import torch

    from sftjob_trainer.device_defaults import device_defaults

    cuda = torch.cuda.is_available()
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "train_throughput.py"), "--gpu-suite", "--tiny-shapes",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {tuple(_cells(line)[:3]): _cells(line) for line in result.stdout.splitlines()
            if line.startswith("| ") and "-tiny |" in line}
    liger = importlib.util.find_spec("liger_kernel") is not None
    attention = device_defaults(cuda, "packed", "bf16" if cuda else "fp32").attention  # sftjob_varlen_sdpa on CPU
    for shape in ("llama-3.2-1b-tiny", "qwen2.5-0.5b-tiny"):
        for method in ("lora", "full"):
            off = rows[(shape, method, "off")]
            assert off[3] == attention
            tok_s, mfu, mfu_attn, memory = (float(off[4]), float(off[5].rstrip("%")), float(off[6].rstrip("%")),
                                            float(off[7]))
            for value in (tok_s, mfu, mfu_attn, memory, float(off[8])):
                assert math.isfinite(value) and value > 0, off
            assert mfu_attn > mfu  # the attention term adds to the weights' FLOPs
            on = rows[(shape, method, "on")]
            assert liger or on[3] == "skipped: liger_kernel not installed"
    device = next(line for line in result.stdout.splitlines() if line.startswith("device: "))
    assert cuda or " CPU, " in device  # the table names the device it measured


def test_gpu_suite_skips_without_cuda(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: without --tiny-shapes the suite would train the 1B-class models")
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "train_throughput.py"), "--gpu-suite", "--write-results",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("skipped: no CUDA device")
    assert not (tmp_path / "gpu-suite-full").exists()


def test_gpu_suite_figures() -> None:
    """MFU arithmetic on a hand-computed row."""
    from bench.gpu_suite import figures

    row = {"method": "lora", "params": 100, "trainable": 10, "tokens": 1000, "wall_s": 2.0, "layers": 2,
           "hidden": 4, "squares": 100}
    # LoRA: 4 FLOPs per frozen parameter + 6 per adapter parameter per token, 500 tokens/s.
    # Attention: 12·L·d·ΣLᵢ²/2 per 2 s = 12·2·4·100/2/2.
    assert figures(row, 1e6) == {"tok_s": 500.0, "mfu": (4 * 90 + 6 * 10) * 500 / 1e6,
                                 "mfu_attn": ((4 * 90 + 6 * 10) * 500 + 2400) / 1e6}
    assert figures({**row, "method": "full"}, 1e6)["mfu"] == 6 * 100 * 500 / 1e6


def test_gpu_suite_writes_only_its_section(tmp_path: Path) -> None:
    from bench.gpu_suite import SECTION, _write_section

    path = tmp_path / "RESULTS.md"
    path.write_text("# Training throughput\n\n| cpu |\n\n## Ray overhead (x)\n\n| ray |\n")
    _write_section(path, ["| first |"])
    _write_section(path, ["| second |"])
    text = path.read_text()
    assert text.count(SECTION) == 1 and "| second |" in text and "| first |" not in text
    # Between the CPU table and the Ray overhead section, which bench/ray_overhead.py rewrites to the end.
    assert text.index("| cpu |") < text.index(SECTION) < text.index("## Ray overhead (x)\n\n| ray |")


@pytest.mark.slow
def test_gpu_suite_shapes_match_the_real_models() -> None:
    """The configs the GPU suite builds have exactly the published parameter counts (on the meta device)."""
    import torch
    from bench.gpu_suite import SHAPES, model_config
    from transformers import AutoModelForCausalLM

    counts = {}
    for shape in SHAPES:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(model_config(shape))
        counts[shape.name] = (type(model).__name__, sum(p.numel() for p in model.parameters()))
    # Llama-3.2-1B: 1.24B with its 128256 x 2048 embedding tied; Qwen2.5-0.5B: 0.49B, tied.
    assert counts == {"llama-3.2-1b": ("LlamaForCausalLM", 1_235_814_400),
                      "qwen2.5-0.5b": ("Qwen2ForCausalLM", 494_032_768)}


@pytest.mark.slow
def test_real_model_tiny(tmp_path: Path, smollm2_dir: Path) -> None:
    """A against ours on SmolLM2 cut to 2 layers (real tokenizer and template), LoRA: the same trained tokens.

    Full fine-tuning runs the calibration rows' code (test_train_throughput_tiny); only LoRA is run here, to keep
    the test short (each side is a fresh process that loads the model). `smollm2_dir` converts the model once
    into the session's model cache, which the bench's processes inherit through SFTJOB_CACHE_DIR.
    """
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "train_throughput.py"), "--model", "smollm2", "--methods", "lora",
         "--scale", "tiny", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {tuple(_cells(line)[:2]): _cells(line) for line in result.stdout.splitlines()
            if line.startswith(("| lora | A |", "| lora | ours |"))}
    seed, ours = rows[("lora", "A")], rows[("lora", "ours")]
    # Same LoRA, steps (16 rows, batch 8) and loss-bearing tokens; ours pads nothing.
    assert seed[2] == ours[2] and seed[3] == ours[3] == "2" and int(seed[4]) == int(ours[4]) > 0
    assert ours[8] == "0.0%"
    assert math.isclose(float(seed[11]), float(ours[11]), rel_tol=0.02)
    ratio = next(line for line in result.stdout.splitlines() if line.startswith("lora: ours/A trained tok/s = "))
    assert float(ratio.split("= ")[1].split("x")[0]) > 0
    assets = tmp_path / "assets-smollm2-tiny"
    assert json.loads((assets / "model" / "config.json").read_text())["num_hidden_layers"] == 2
    # A's rows are the chats rendered by the model's own ChatML template, with its default system prompt.
    chat = json.loads((assets / "train_chats.jsonl").read_text().splitlines()[0])
    row = json.loads((assets / "train.jsonl").read_text().splitlines()[0])
    assert row["prompt"].startswith("<|im_start|>system\n") and row["prompt"].endswith("<|im_start|>assistant\n")
    assert chat["messages"][0]["content"] in row["prompt"] and row["completion"] == chat["messages"][1]["content"]


def _real_model_run(trained: int, heldout: float, tok_s: float) -> dict[str, object]:
    return {"trainable": 1_000_000, "steps": 30, "trained": trained, "trained_tok_s": tok_s, "processed_tok_s": tok_s,
            "padding": 0.0, "peak_memory_mb": 900.0, "train_loss": 1.0, "heldout_loss": heldout}


def test_real_model_ratio_is_the_median_of_paired_rounds() -> None:
    sys.path.insert(0, str(REPO))
    from bench.real_model import table

    seed = [_real_model_run(100, 1.0, v) for v in (100.0, 50.0, 90.0)]
    # 1.15, 1.8 and 1.33 of their rounds' A: median 1.33 (best ÷ best would be 1.20, median ÷ median 1.28).
    ours = [_real_model_run(100, 1.0, v) for v in (115.0, 90.0, 120.0)]
    lines, ratios = table({("lora", "A"): seed, ("lora", "ours"): ours}, ["lora"])
    assert ratios == ["lora: ours/A trained tok/s = 1.33x (median of 3 paired round(s): 1.15, 1.80, 1.33)"]
    assert "| lora | ours | 1.0M | 30 | 100 | 115 | 115, 90, 120 |" in "\n".join(lines)


def test_real_model_flags_other_trained_tokens_and_held_out_losses() -> None:
    sys.path.insert(0, str(REPO))
    from bench.real_model import disagreements

    seed = [_real_model_run(100, 2.0, 1.0), _real_model_run(100, 2.0, 1.0)]
    fair = [_real_model_run(100, 2.03, 1.0), _real_model_run(100, 1.97, 1.0)]  # within 2% of 2.0
    assert disagreements({("full", "A"): seed, ("full", "ours"): fair}, ["full"]) == []
    unfair = [_real_model_run(99, 2.0, 1.0), _real_model_run(100, 2.05, 1.0)]
    assert disagreements({("full", "A"): seed, ("full", "ours"): unfair}, ["full"]) == [
        "full round 1: ours trained 99 tokens, A 100",
        "full round 2: held-out loss 2.0500 is more than 2% off A's 2.0000",
    ]


def test_demo_timing_splits_the_run_by_its_marks() -> None:
    sys.path.insert(0, str(REPO))
    from bench.demo_timing import buckets, split_run

    phases = [("start", "imports", "other"), ("converted", "conversion", "model load"), ("worker", "worker", "split"),
              ("step", "training", "training"), ("ckpt", "checkpoint", "training"), ("done", "export", "export")]
    marks = {"start": 5.0, "converted": 35.0, "worker": 60.0, "step": 160.0, "ckpt": 150.0, "done": 170.0}
    rows = split_run(marks, 10.0, phases)
    assert [(name, None if math.isnan(s) else s, bucket) for name, s, bucket in rows] == [
        ("imports", 5.0, "other"), ("conversion", 30.0, "model load"),
        ("worker: the model load (timed apart)", 10.0, "model load"),
        ("worker: the rest (base model evaluation)", 15.0, "evaluation"),
        ("training", 100.0, "training"),
        ("checkpoint", None, "training"),  # seen before the mark ahead of it: its time goes to the next phase
        ("export", 10.0, "export"),
    ]
    assert buckets(rows) == {"install": 0.0, "model load": 40.0, "data": 0.0, "training": 100.0,
                             "evaluation": 15.0, "export": 10.0, "other": 5.0}
    # A model load timed apart longer than the window it is taken from takes the whole window, never more.
    assert split_run({"worker": 4.0}, 10.0, [("worker", "worker", "split")])[0][1] == 4.0


@pytest.mark.slow
def test_generation_tiny(smollm2_dir: Path) -> None:
    # smollm2_dir: the real model converted once into this run's SFTJOB_CACHE_DIR, which the bench reuses.
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "generation.py"), "--scale", "tiny", "--rounds", "1"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| one prompt at a time |" in result.stdout and "| batched (16, left padding, KV cache) |" in result.stdout
    assert "answers agree 4/4" in result.stdout
