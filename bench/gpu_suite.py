"""The GPU suite of bench/train_throughput.py: 1B-class models at 2048 tokens through sftjob's trainer.

    python bench/train_throughput.py --gpu-suite [--write-results]     # on a CUDA machine (a lent H100)
    python bench/train_throughput.py --gpu-suite --tiny-shapes         # the same code, shrunk, on CPU

Two model shapes built from a config (random init, no hub): Llama-3.2-1B (hidden 2048, 16 layers,
32 heads, 8 KV heads, MLP 8192, vocab 128256, tied embeddings) and Qwen2.5-0.5B (hidden 896, 24
layers, 14 heads, 2 KV heads, MLP 4864, vocab 151936, tied). Synthetic long-tailed prompt/completion
data (lognormal lengths, median 512, p95 1536 tokens, maxSeqLength 2048), packed as `sftjob run`
packs it. For each shape, {LoRA, full} x {Liger on, off} trains a fixed number of steps through
`sftjob_trainer.in_process.build_local_trainer` (the data pipeline, resolved plan, attention and
SFTTrainer of a real job), each row in a fresh process, and reports after the warm-up steps:

- tokens/s/GPU: all tokens fed to the model (packed rows carry no padding) per second of the timed steps;
- MFU = k·N·tokens/s / peak, k = 6 for full fine-tuning (forward + both backward matmuls) and 4 for
  LoRA (the frozen weights need no weight gradients; the adapters' 6·n is added), N counting tied
  embeddings once; `MFU +attn` adds causal attention, 12·L·d·ΣLᵢ²/2 over the packed examples;
- peak memory: torch.cuda.max_memory_allocated (CPU: the process's peak RSS).

Peak: the H100 SXM dense bf16 datasheet figure (989 TFLOP/s) on CUDA; a dense fp32 matmul measured
in the same run on CPU. Liger rows need liger-kernel (the `gpu` extra); without it they print
`skipped: liger_kernel not installed` and the others still run. Gradient checkpointing is off
(`--checkpointing` changes it): the suite measures the kernels, and 80 GB holds these activations.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SECTION = "## GPU suite"
METHODS = ("lora", "full")
# Per-token FLOP factor of the weights: forward 2N + backward 4N (activation and weight gradients);
# a frozen base skips the weight gradients.
FULL_FLOPS_PER_PARAM, FROZEN_FLOPS_PER_PARAM = 6, 4
# Learning rate of every row: throughput does not depend on it; it only keeps the losses finite.
LR = 1e-4


@dataclass(frozen=True)
class Shape:
    """A model shape from its config."""

    name: str
    family: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    rope_theta: float
    max_positions: int


SHAPES = (
    Shape("llama-3.2-1b", "llama", 2048, 16, 32, 8, 8192, 128256, 500000.0, 131072),
    Shape("qwen2.5-0.5b", "qwen2", 896, 24, 14, 2, 4864, 151936, 1000000.0, 32768),
)


@dataclass(frozen=True)
class SuiteScale:
    """Data, batch and step sizes of one run of the suite."""

    seq: int
    """maxSeqLength."""
    median: int
    """Median example length in tokens."""
    p95: int
    """95th percentile of the example length."""
    tokenizer_vocab: int
    """BPE vocabulary of the synthetic text (the model's vocabulary stays the shape's)."""
    batch: int
    """Examples per step (one packed row)."""
    steps: int
    """Optimizer steps per row."""
    warmup: int
    """Leading steps left out of the timing (kernel autotuning, Triton compilation, allocator growth)."""


# 16 examples of ~650 tokens on average: ~10k tokens per packed row, 20 steps with 5 untimed.
GPU_SCALE = SuiteScale(seq=2048, median=512, p95=1536, tokenizer_vocab=4000, batch=16, steps=20, warmup=5)
# The smoke test's: seconds on 2 CPU cores, one timed step.
TINY_SCALE = SuiteScale(seq=128, median=24, p95=80, tokenizer_vocab=600, batch=4, steps=2, warmup=1)


def tiny(shape: Shape) -> Shape:
    """The shape shrunk for CPU: same family and grouped-query layout, hidden 64, 2 layers."""
    return replace(shape, name=f"{shape.name}-tiny", hidden=64, layers=2, heads=4, kv_heads=2, intermediate=256,
                   vocab=1024, max_positions=512)


def model_config(shape: Shape, **token_ids: Any) -> Any:
    """The transformers config of `shape` (tied embeddings), with the tokenizer's special token ids."""
    from transformers import AutoConfig

    return AutoConfig.for_model(
        shape.family, vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers, num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
        max_position_embeddings=shape.max_positions, rope_theta=shape.rope_theta, tie_word_embeddings=True,
        **token_ids,
    )


def _text_for(tokenizer: Any, stream: Any, target: int) -> str:
    """Text of `target` tokens (±1 where the cut merges differently), cut at a token boundary."""
    text = ""
    while True:
        text += "".join(next(stream) for _ in range(max(8, target)))
        encoded = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
        if len(encoded["input_ids"]) >= target:
            return text[: encoded["offset_mapping"][target - 1][1]].lstrip(" ")


def build_assets(out: Path, scale: SuiteScale, shapes: tuple[Shape, ...], seed: int = 0) -> dict[str, Any]:
    """Write `<shape>/` (tokenizer + random bf16/fp32 weights, kept for reruns) and `train.jsonl` under `out`.

    Returns:
        Length statistics of the training set (target tokens per example, prompt + completion).
    """
    import torch
    from bench.assets import _chunks, _lexicon
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sftjob_trainer.tiny import build_tokenizer

    rng = random.Random(seed)
    lexicon = _lexicon(rng, 4000)
    corpus_stream = _chunks(lexicon, random.Random(seed + 1))
    corpus = ["".join(next(corpus_stream) for _ in range(200)) for _ in range(600)]
    vocab_dir = build_tokenizer(out / "tokenizer", corpus, scale.tokenizer_vocab)
    tokenizer = AutoTokenizer.from_pretrained(vocab_dir)
    cuda = torch.cuda.is_available()
    for shape in shapes:
        target = out / shape.name
        if (target / "model.safetensors").exists():
            continue
        config = model_config(shape, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                              pad_token_id=tokenizer.pad_token_id)
        torch.manual_seed(seed)
        with torch.device("cuda" if cuda else "cpu"):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if cuda else torch.float32)
        model.save_pretrained(target, safe_serialization=True)
        tokenizer.save_pretrained(target)
        del model
    # sigma puts the 95th percentile (z = 1.6449) at p95; lengths leave room for EOS and a merge at the cut.
    sigma = math.log(scale.p95 / scale.median) / 1.6449
    lengths = random.Random(seed + 3)
    text_stream = _chunks(lexicon, random.Random(seed + 2))
    rows, totals = [], []
    # One spare step of examples, so the last step is as full as the others.
    for _ in range((scale.steps + 1) * scale.batch):
        total = max(8, min(round(math.exp(math.log(scale.median) + sigma * lengths.gauss(0, 1))), scale.seq - 4))
        prompt_len = max(3, round(total * lengths.uniform(0.2, 0.4)))
        rows.append({"prompt": _text_for(tokenizer, text_stream, prompt_len),
                     "completion": " " + _text_for(tokenizer, text_stream, total - prompt_len)})
        totals.append(total)
    (out / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    totals.sort()
    return {"examples": len(totals), "tokens": sum(totals), "p50": totals[len(totals) // 2],
            "p95": totals[int(len(totals) * 0.95)], "max": totals[-1]}


class _Counter:
    """Forward pre-hook: tokens and Σ(example length)² of every training forward pass."""

    def __init__(self) -> None:
        self.tokens = 0
        self.squares = 0

    def __call__(self, module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        from sftjob_trainer.attention import segment_lengths

        if not module.training or kwargs.get("input_ids") is None:
            return
        self.tokens += int(kwargs["input_ids"].numel())
        if kwargs.get("position_ids") is not None:
            self.squares += sum(n * n for row in kwargs["position_ids"] for n in segment_lengths(row))
        else:
            self.squares += sum(int(n) ** 2 for n in kwargs["attention_mask"].sum(1).tolist())


def _timer(warmup: int, counter: _Counter, cuda: bool) -> Any:
    """A TrainerCallback timing the steps after `warmup` (the GPU synchronised at both ends)."""
    import torch
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.start = self.end = 0.0
            self.tokens = self.squares = 0

        def _now(self) -> float:
            if cuda:
                torch.cuda.synchronize()
            return time.perf_counter()

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == warmup:
                self.start = self._now()
                self.tokens, self.squares = counter.tokens, counter.squares

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == state.max_steps:
                self.end = self._now()
                self.tokens, self.squares = counter.tokens - self.tokens, counter.squares - self.squares

    return StepTimer()


def run_row(model_dir: Path, data: Path, method: str, liger: bool, scale: SuiteScale, checkpointing: str,
            out: Path) -> dict[str, Any]:
    """Train one row in this process through sftjob's trainer and measure it."""
    import torch

    from sftjob_api.types import parse_sftjob
    from sftjob_trainer.in_process import build_local_trainer

    cuda = torch.cuda.is_available()
    job = parse_sftjob({
        "apiVersion": "sftjob.dev/v1alpha1", "kind": "SFTJob", "metadata": {"name": "gpu-suite"},
        "spec": {
            "model": {"source": str(model_dir)},
            "dataset": {"train": {"uri": str(data)}, "schema": "prompt_completion", "maxSeqLength": scale.seq,
                        "dedup": False, "packing": True},
            "method": {"type": method},
            "hyperparameters": {"maxSteps": scale.steps, "learningRate": LR, "batchSize": scale.batch,
                                "perDeviceBatchSize": scale.batch, "warmupRatio": 0.0, "seed": 0,
                                "logInterval": scale.steps, "gradientCheckpointing": checkpointing},
            "compute": {"numWorkers": 1, "gpusPerWorker": 1 if cuda else 0},
            "output": {"uri": str(out / "output")},
        },
    })
    trainer, _, resolved = build_local_trainer(job, out / "trainer")
    # The row's Liger setting replaces the resolved default (on wherever liger-kernel is installed). TRL
    # keeps Liger's fused linear cross-entropy off, as it does for a job resolved to `liger`.
    trainer.args.use_liger_kernel = liger
    if liger:
        trainer.args.liger_kernel_config = {"fused_linear_cross_entropy": False}
    counter = _Counter()
    trainer.model.register_forward_pre_hook(counter, with_kwargs=True)
    timer = _timer(scale.warmup, counter, cuda)
    trainer.add_callback(timer)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    result = trainer.train()
    model = trainer.model
    params = {id(p): p for p in model.parameters()}  # tied embeddings once
    total = sum(p.numel() for p in params.values())
    trainable = sum(p.numel() for p in params.values() if p.requires_grad)
    config = model.config
    # Attention width: heads x head_dim (equal to the hidden size in both shapes).
    width = config.num_attention_heads * (getattr(config, "head_dim", None) or config.hidden_size
                                          // config.num_attention_heads)
    return {
        "method": method, "liger": liger, "attention": resolved.get("attention"),
        "precision": resolved.get("precision"), "checkpointing": resolved.get("gradientCheckpointing"),
        "steps": trainer.state.global_step, "wall_s": timer.end - timer.start, "tokens": timer.tokens,
        "squares": timer.squares, "params": total, "trainable": trainable, "layers": config.num_hidden_layers,
        "hidden": width,
        "train_loss": result.metrics.get("train_loss"),
        "peak_memory_mb": (torch.cuda.max_memory_allocated() / 2**20 if cuda
                           else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def quick_cpu_peak() -> float:
    """Best dense fp32 1024² matmul throughput of this CPU in FLOP/s: the tiny suite's MFU denominator.

    Smaller and quicker than train_throughput's default shapes (~20 s on 2 busy cores): on CPU the
    suite only proves that its code runs and measures.
    """
    from bench.machine import matmul_peak

    return matmul_peak(((1024, 5),))  # one 1024² product, 5 repetitions


def figures(row: dict[str, Any], peak: float) -> dict[str, float]:
    """tokens/s, model FLOP/s and attention FLOP/s of a measured row, and the MFUs over `peak`."""
    tok_s = row["tokens"] / row["wall_s"]
    if row["method"] == "full":
        per_token = FULL_FLOPS_PER_PARAM * row["params"]
    else:
        frozen = row["params"] - row["trainable"]
        per_token = FROZEN_FLOPS_PER_PARAM * frozen + FULL_FLOPS_PER_PARAM * row["trainable"]
    model_flops = per_token * tok_s
    # Causal attention, forward + backward: 12·L·d per (query, key) pair, about half the pairs computed.
    attention_flops = 12 * row["layers"] * row["hidden"] * row["squares"] / 2 / row["wall_s"]
    return {"tok_s": tok_s, "mfu": model_flops / peak, "mfu_attn": (model_flops + attention_flops) / peak}


def table(results: list[tuple[str, dict[str, Any] | str]], peak: float) -> list[str]:
    """Markdown rows: measured rows with their figures, skipped ones with the reason."""
    lines = ["| model | method | liger | attention | tokens/s/GPU | MFU | MFU +attn | peak mem MiB | loss |",
             "|---|---|---|---|---|---|---|---|---|"]
    for key, row in results:
        shape, method, liger = key.split("/")
        if isinstance(row, str):
            lines.append(f"| {shape} | {method} | {liger} | {row} | | | | | |")
            continue
        f = figures(row, peak)
        lines.append(f"| {shape} | {method} | {liger} | {row['attention']} | {f['tok_s']:.0f} | "
                     f"{100 * f['mfu']:.3g}% | {100 * f['mfu_attn']:.3g}% | {row['peak_memory_mb']:.0f} | "
                     f"{row['train_loss']:.4f} |")
    return lines


def _write_section(path: Path, body: list[str]) -> None:
    """Replace this suite's section of RESULTS.md, keeping every other section (see bench.results)."""
    from bench.results import write_section

    write_section(path, SECTION, "bench/train_throughput.py --gpu-suite", body)


def run_suite(out: Path, tiny_shapes: bool, write_results: bool, checkpointing: str = "off") -> int:
    """Run every row (each in a fresh process) and print the table; write it when asked on CUDA.

    Returns:
        The exit code: 0, or 2 when a row failed.
    """
    import importlib.util

    import torch
    from bench.machine import H100_BF16_PEAK, device_name, versions

    cuda = torch.cuda.is_available()
    if not cuda and not tiny_shapes:
        print("skipped: no CUDA device (the GPU suite needs one; --tiny-shapes runs its code on CPU)")
        return 0
    scale = TINY_SCALE if tiny_shapes else GPU_SCALE
    shapes = tuple(tiny(s) for s in SHAPES) if tiny_shapes else SHAPES
    work = out / f"gpu-suite-{'tiny' if tiny_shapes else 'full'}"
    work.mkdir(parents=True, exist_ok=True)
    stats = build_assets(work, scale, shapes)
    print(f"data: {stats}", flush=True)
    peak = H100_BF16_PEAK if cuda else quick_cpu_peak()
    liger_installed = importlib.util.find_spec("liger_kernel") is not None
    planned: list[tuple[str, dict[str, Any] | str]] = []
    for shape in shapes:
        for method in METHODS:
            for liger in (False, True):
                key = f"{shape.name}/{method}/{'on' if liger else 'off'}"
                if liger and not liger_installed:
                    planned.append((key, "skipped: liger_kernel not installed"))
                    continue
                planned.append((key, {"model_dir": str(work / shape.name), "data": str(work / "train.jsonl"),
                                      "method": method, "liger": liger, "scale": asdict(scale),
                                      "checkpointing": checkpointing,
                                      "out": str(work / "runs" / key.replace("/", "-"))}))
    runnable = [(key, row) for key, row in planned if isinstance(row, dict)]
    # On CUDA each row has a process of its own (peak memory, and Liger patches model classes for good);
    # the CPU smoke run shares one process across rows, as it never turns Liger on (its peak RSS is cumulative).
    groups = [runnable] if tiny_shapes and not cuda else [[item] for item in runnable]
    measured: dict[str, dict[str, Any]] = {}
    env = {**os.environ, "PYTHONPATH": str(HERE.parent) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for group in groups:
        proc = subprocess.run([sys.executable, __file__, "--rows", json.dumps([row for _, row in group])],
                              capture_output=True, text=True, env=env)
        found = [json.loads(line[7:]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or len(found) != len(group):
            print(proc.stdout[-3000:], proc.stderr[-5000:], file=sys.stderr)
            return 2
        for (key, _), row in zip(group, found, strict=True):
            measured[key] = row
            print(f"{key}: {figures(row, peak)['tok_s']:.0f} tokens/s", flush=True)
    results = [(key, measured[key] if isinstance(row, dict) else row) for key, row in planned]
    for key, row in results:
        if isinstance(row, str):
            print(f"{key}: {row}")
    lines = table(results, peak)
    device = device_name()
    print(f"device: {device}; peak {peak / 1e12:.3f} TFLOP/s")
    print("\n".join(lines))
    if write_results:
        if not cuda or tiny_shapes:
            print("not writing bench/RESULTS.md: the GPU suite's table is written from a CUDA run at full shapes")
            return 0
        first = next(r for _, r in results if isinstance(r, dict))
        _write_section(HERE / "RESULTS.md", [
            f"Device: {device}; {versions()}; Python {sys.version.split()[0]}.",
            f"Data: {stats}; maxSeqLength {scale.seq}, {scale.batch} examples packed per step (one padding-free "
            f"row), {scale.steps} steps of which the first {scale.warmup} are not timed; precision "
            f"{first['precision']}, gradient checkpointing {first['checkpointing']}.",
            f"Peak: {peak / 1e12:.0f} TFLOP/s (H100 SXM dense bf16 datasheet). MFU = k·N·tokens/s / peak with "
            "k = 6 (full) or 4 on the frozen weights + 6 on the adapters (LoRA); MFU +attn adds causal attention, "
            "12·L·d·ΣLᵢ²/2.",
            "",
            *lines,
        ])
    return 0


def _rows_main(payload: str) -> int:
    for args in json.loads(payload):
        row = run_row(Path(args["model_dir"]), Path(args["data"]), args["method"], args["liger"],
                      SuiteScale(**args["scale"]), args["checkpointing"], Path(args["out"]))
        print("RESULT " + json.dumps(row), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run rows in this process, one after the other (`--rows JSON`, used by `run_suite`)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", required=True)
    return _rows_main(parser.parse_args(argv).rows)


if __name__ == "__main__":
    sys.exit(main())
