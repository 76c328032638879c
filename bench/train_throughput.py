"""Trained tokens per second of sftjob's default training path against three baselines, in one run.

    python bench/train_throughput.py [--scale full|tiny] [--configs A,A2,B,ours] [--out DIR] [--write-results]
    python bench/train_throughput.py --gpu-suite [--write-results]     # on a lent H100 (or any CUDA GPU)
    python bench/train_throughput.py --gpu-suite --tiny-shapes         # the GPU suite's code, shrunk, on CPU
    python bench/train_throughput.py --model smollm2 [--methods lora,full] [--rounds N] [--write-results]
                                                                       # A vs ours on a real model (bench/real_model.py)

Baselines (as in the workplace's shared/reference/perf-calibration, same model, data and trained tokens):
  A   the seed recipe: HF Trainer, prompt masked, dynamic padding, batch 8, random order
  A2  A with the length-grouped sampler
  B   TRL SFTTrainer with SFTConfig defaults (no packing), batch 8
ours  sftjob's trainer as `sftjob run` configures it for this device (data pipeline, batching and
      attention chosen per device, TRL SFTTrainer), batch 8

Each configuration runs in a fresh process (peak RSS is per process). The run prints trained and
all tokens/s, padding, peak memory, losses, gradient norm and useful MFU = k·N·(non-pad tokens/s)
/ peak, with the CPU peak measured by a dense matmul in this run (GPU: the datasheet's bf16 peak).
It exits 1 when held-out losses disagree by more than 2% with A's (a fast run that learns less is
not fast) — never because of speed.

--model smollm2 (bench/real_model.py): A against ours on the real SmolLM2-135M-Instruct, LoRA and full
fine-tuning, over the demo's order-extraction task rendered with the model's chat template; rounds
alternate the two, and the ratio is the median of each round's ours/A.

--gpu-suite (bench/gpu_suite.py): Llama-3.2-1B- and Qwen2.5-0.5B-shaped models built from their
configs, 2048-token packed rows of synthetic long-tailed data, LoRA and full fine-tuning with and
without Liger, each through sftjob's own trainer: tokens/s/GPU, MFU (6·N or, for LoRA, 4·N on the
frozen weights, against the H100 SXM bf16 datasheet peak; with the causal attention term beside it)
and peak GPU memory. Without CUDA it prints `skipped: no CUDA device` and exits 0; --tiny-shapes
runs the same code on CPU with shrunken shapes (the smoke test). --write-results replaces only its
own section of bench/RESULTS.md, and only from a CUDA run at full shapes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CONFIGS = ("A", "A2", "B", "ours")
# Shared optimisation settings of every configuration (the calibration's): one epoch, lr 5e-4 with
# linear decay and no warmup, no weight decay, clipping at 1.0, seed 0, batch 8 examples.
LR, SEED, BATCH = 5e-4, 0, 8
# Held-out losses may differ by at most this fraction from A's.
LOSS_TOLERANCE = 0.02
# Chat rows of a real model's assets (bench/real_model.py), which ours trains instead of train.jsonl.
CHATS_FILE = "train_chats.jsonl"
# LoRA of both sides: the demo job's (examples/quickstart.yaml) on every linear layer, sftjob's default targets.
LORA = {"r": 16, "alpha": 32, "dropout": 0.0}
class Counter:
    """Wraps a collator and counts exactly what the model is fed."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.processed = self.real = self.trained = self.attention_useful = 0

    def __call__(self, features: Any) -> Any:
        batch = self.inner(features)
        ids, labels = batch["input_ids"], batch["labels"]
        self.processed += ids.numel()
        self.trained += int((labels[:, 1:] != -100).sum())
        if "attention_mask" in batch:
            lengths = batch["attention_mask"].sum(1).tolist()
        else:
            from sftjob_trainer.attention import segment_lengths

            lengths = segment_lengths(batch["position_ids"][0])
        self.real += int(sum(lengths))
        self.attention_useful += int(sum(n * n for n in lengths))
        return batch


def _heldout_loss(model: Any, tokenizer: Any, eval_path: Path) -> float:
    """Completion-token mean NLL on held-out examples (one at a time, no padding): the same for every config."""
    import torch

    model.eval()
    nll, count = 0.0, 0
    with torch.no_grad():
        for line in eval_path.read_text().splitlines():
            row = json.loads(line)
            prompt = tokenizer(row["prompt"])["input_ids"]
            full = tokenizer(row["prompt"] + row["completion"] + tokenizer.eos_token)["input_ids"]
            logits = model(input_ids=torch.tensor([full]), use_cache=False).logits[0, :-1].float()
            target = torch.tensor([-100] * len(prompt) + full[len(prompt) :])[1:]
            nll += torch.nn.functional.cross_entropy(logits, target, ignore_index=-100, reduction="sum").item()
            count += int((target != -100).sum())
    return nll / count


def method_spec(method: str) -> dict[str, Any]:
    """`spec.method` of a `lora` or `full` run, as wire JSON; the seed recipe builds its adapter from the same."""
    return {"type": method, **({"lora": LORA} if method == "lora" else {})}


def _common_args(out: Path, lr: float = LR) -> dict[str, Any]:
    return {
        "output_dir": str(out / "trainer"), "num_train_epochs": 1, "learning_rate": lr, "lr_scheduler_type": "linear",
        "warmup_steps": 0, "weight_decay": 0.0, "max_grad_norm": 1.0, "seed": SEED, "logging_steps": 10,
        "save_strategy": "no", "report_to": "none", "disable_tqdm": True, "use_cpu": not _cuda(),
        "bf16": _cuda(), "fp16": False, "dataloader_num_workers": 0, "gradient_checkpointing": False,
    }


def _cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _baseline_trainer(config: str, assets: Path, out: Path, method: str = "full", lr: float = LR) -> tuple[Any, Any]:
    import torch
    from datasets import load_dataset
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    tokenizer = AutoTokenizer.from_pretrained(assets / "model")
    dtype = torch.bfloat16 if _cuda() else torch.float32
    set_seed(SEED)  # before the model, as sftjob's worker does: both LoRAs start from the same random init
    model = AutoModelForCausalLM.from_pretrained(assets / "model", dtype=dtype)
    if method == "lora":
        from peft import get_peft_model

        from sftjob_api.types import MethodSpec
        from sftjob_trainer.methods import peft_config

        lora = peft_config(MethodSpec.model_validate(method_spec(method)), str(assets / "model"))
        model = get_peft_model(model, lora)
    raw = load_dataset("json", data_files=str(assets / "train.jsonl"), split="train")
    if config in ("A", "A2"):

        def tokenize(row: dict[str, str]) -> dict[str, list[int]]:
            # The seed's recipe: mask the prompt, train prompt + completion + EOS.
            prompt = tokenizer(row["prompt"])["input_ids"]
            full = tokenizer(row["prompt"] + row["completion"] + tokenizer.eos_token)
            return {"input_ids": full["input_ids"], "attention_mask": full["attention_mask"],
                    "labels": [-100] * len(prompt) + full["input_ids"][len(prompt) :]}

        dataset = raw.map(tokenize, remove_columns=raw.column_names)
        args = TrainingArguments(per_device_train_batch_size=BATCH,
                                 train_sampling_strategy="group_by_length" if config == "A2" else "random",
                                 **_common_args(out, lr))
        collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
        return Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator), tokenizer
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(per_device_train_batch_size=BATCH, **_common_args(out, lr))
    return SFTTrainer(model=model, args=args, train_dataset=raw, processing_class=tokenizer), tokenizer


def _ours_dataset(assets: Path) -> dict[str, Any]:
    """`spec.dataset` of ours: the prompt/completion rows, or a real model's chats when the assets have them.

    bench/real_model.py writes the demo's chat rows for ours (rendered by sftjob with the model's template,
    as the demo trains them) and the same rows rendered by transformers' `apply_chat_template` as prompt/
    completion for the seed recipe, which trains the answer and EOS (`<|im_end|>`): the tokens ours trains.
    """
    chats = assets / CHATS_FILE
    train = {"uri": str(chats)} if chats.exists() else {"uri": str(assets / "train.jsonl")}
    return {"train": train, "schema": "messages" if chats.exists() else "prompt_completion", "maxSeqLength": 1024,
            "dedup": False}


def _ours_trainer(assets: Path, out: Path, method: str = "full", lr: float = LR) -> tuple[Any, Any, dict[str, Any]]:
    """sftjob's trainer, configured exactly as `sftjob run` does for this device, in this process."""
    from sftjob_api.types import parse_sftjob
    from sftjob_trainer.in_process import build_local_trainer

    job = parse_sftjob({
        "apiVersion": "sftjob.dev/v1alpha1", "kind": "SFTJob", "metadata": {"name": "bench"},
        "spec": {
            "model": {"source": str(assets / "model")},
            "dataset": _ours_dataset(assets),
            "method": method_spec(method),
            "hyperparameters": {"epochs": 1, "learningRate": lr, "batchSize": BATCH, "lrScheduler": "linear",
                                "warmupRatio": 0.0, "weightDecay": 0.0, "maxGradNorm": 1.0, "seed": SEED,
                                "logInterval": 10},
            "compute": {"numWorkers": 1, "gpusPerWorker": 1 if _cuda() else 0},
            "output": {"uri": str(out / "ours-output")},
        },
    })
    trainer, tokenizer, resolved = build_local_trainer(job, out / "trainer")
    return trainer, tokenizer, resolved


def run_one(config: str, assets: Path, out: Path, method: str = "full", lr: float = LR) -> dict[str, Any]:
    """Train one configuration (`method` `full` or `lora`) in this process and measure it."""
    import torch

    resolved: dict[str, Any] = {}
    if config == "ours":
        trainer, tokenizer, resolved = _ours_trainer(assets, out, method, lr)
    else:
        trainer, tokenizer = _baseline_trainer(config, assets, out, method, lr)
    counter = Counter(trainer.data_collator)
    trainer.data_collator = counter
    if _cuda():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = trainer.train()
    wall = time.perf_counter() - start
    grad_norms = [h["grad_norm"] for h in trainer.state.log_history if "grad_norm" in h]
    model = trainer.model
    n_params = sum(p.numel() for p in model.parameters())
    config_ = model.config
    heldout = _heldout_loss(model, tokenizer, assets / "eval.jsonl")
    peak_memory = (torch.cuda.max_memory_allocated() / 2**20 if _cuda()
                   else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {
        "config": config, "method": method, "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "steps": trainer.state.global_step, "wall_s": wall, "processed": counter.processed,
        "real": counter.real, "trained": counter.trained, "attention_useful": counter.attention_useful,
        "padding": 1 - counter.real / counter.processed, "trained_tok_s": counter.trained / wall,
        "processed_tok_s": counter.processed / wall, "real_tok_s": counter.real / wall,
        "train_loss": result.metrics.get("train_loss"), "heldout_loss": heldout,
        "grad_norm_last": grad_norms[-1] if grad_norms else None, "peak_memory_mb": peak_memory,
        "n_params": n_params, "layers": config_.num_hidden_layers, "hidden": config_.hidden_size,
        "resolved": resolved,
    }


def useful_mfu(row: dict[str, Any], peak: float) -> tuple[float, float]:
    """(useful MFU, attention share): 6·N·non-pad tokens/s over peak, and the useful attention FLOPs beside it."""
    linear = 6 * row["n_params"] * row["real_tok_s"]
    # Causal attention, forward + backward: 12·L·d per (query, key) pair, ~half the pairs are computed.
    attention = 12 * row["layers"] * row["hidden"] * row["attention_useful"] / 2 / row["wall_s"]
    return linear / peak, attention / (linear + attention)


def _table(rows: list[dict[str, Any]], peak: float) -> list[str]:
    lines = ["| config | steps | trained tok/s | all tok/s | padding | peak mem MB | train loss | held-out loss "
             "| grad norm | useful MFU | attention share |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mfu, attention = useful_mfu(r, peak)
        lines.append(
            f"| {r['config']} | {r['steps']} | {r['trained_tok_s']:.0f} | {r['processed_tok_s']:.0f} | "
            f"{100 * r['padding']:.1f}% | {r['peak_memory_mb']:.0f} | {r['train_loss']:.4f} | "
            f"{r['heldout_loss']:.4f} | {r['grad_norm_last'] or 0:.3f} | {100 * mfu:.1f}% | {100 * attention:.1f}% |"
        )
    return lines


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib
    from bench.machine import device_name

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = [r["config"] for r in rows]
    values = [r["trained_tok_s"] for r in rows]
    ax.bar(names, values, color=["#999"] * (len(rows) - 1) + ["#2a7"])
    ax.set_ylabel("trained tokens / s")
    ax.set_title(f"SFT throughput, one run ({device_name()})", fontsize=9)
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:.0f}", ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def fresh_process(argv: list[str]) -> dict[str, Any] | None:
    """One `--one` configuration of this script (arguments `argv`) in a fresh process: its result row.

    Returns:
        The row, or None when the run failed (its output is printed to stderr).
    """
    env = {**os.environ, "PYTHONPATH": str(HERE.parent) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), *argv], capture_output=True, text=True,
                          env=env)
    result = next((line[7:] for line in proc.stdout.splitlines() if line.startswith("RESULT ")), None)
    if proc.returncode != 0 or result is None:
        print(proc.stdout[-3000:], proc.stderr[-5000:], file=sys.stderr)
        return None
    return dict(json.loads(result))


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or, with --one, a single configuration in this process)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=("full", "tiny"), default="full")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--out", type=Path, default=HERE / ".work")
    parser.add_argument("--write-results", action="store_true", help="write bench/RESULTS.md and throughput.png")
    parser.add_argument("--gpu-suite", action="store_true", help="the GPU suite (bench/gpu_suite.py)")
    parser.add_argument("--tiny-shapes", action="store_true", help="with --gpu-suite: shrunken shapes, CPU is fine")
    parser.add_argument("--checkpointing", choices=("auto", "on", "off"), default="off",
                        help="with --gpu-suite: gradient checkpointing of every row")
    parser.add_argument("--model", choices=("calibration", "smollm2"), default="calibration",
                        help="smollm2: A against ours on the real SmolLM2-135M-Instruct (bench/real_model.py)")
    parser.add_argument("--methods", default="lora,full", help="with --model smollm2: lora, full or both")
    parser.add_argument("--rounds", type=int, default=1, help="with --model smollm2: alternating rounds")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.gpu_suite:
        sys.path.insert(0, str(HERE.parent))  # run as a script: make `bench` importable
        from bench.gpu_suite import run_suite

        return run_suite(args.out, args.tiny_shapes, args.write_results, args.checkpointing)
    if args.model == "smollm2":
        sys.path.insert(0, str(HERE.parent))  # run as a script: make `bench` importable
        from bench import real_model

        if args.one:
            assets = real_model.assets_dir(args.out, args.scale)
            row = run_one(args.one, assets, args.out / f"{args.methods}-{args.one}", args.methods,
                          real_model.LR[args.methods])
            print("RESULT " + json.dumps(row), flush=True)
            return 0
        return real_model.run(args.out, args.scale, args.methods.split(","), args.rounds, args.write_results)
    assets = args.out / f"assets-{args.scale}"
    if args.one:
        print("RESULT " + json.dumps(run_one(args.one, assets, args.out / args.one)), flush=True)
        return 0

    sys.path.insert(0, str(HERE.parent))  # run as a script: make `bench` importable
    from bench import assets as asset_builder
    from bench.machine import H100_BF16_PEAK, device_name, matmul_peak, versions

    if not (assets / "eval.jsonl").exists():
        stats = asset_builder.build(assets, args.scale)
    else:
        stats = json.loads((assets / "length_stats.json").read_text())
    print(f"data: {stats}", flush=True)
    peak = H100_BF16_PEAK if _cuda() else matmul_peak()
    print(f"peak: {peak / 1e9:.1f} GFLOP/s ({'datasheet' if _cuda() else 'dense fp32 matmul, measured now'})")
    rows = []
    for config in args.configs.split(","):
        started = time.perf_counter()
        result = fresh_process(["--one", config, "--scale", args.scale, "--out", str(args.out)])
        if result is None:
            return 2
        rows.append(result)
        print(f"{config}: {rows[-1]['trained_tok_s']:.0f} trained tok/s "
              f"({time.perf_counter() - started:.0f} s with setup)", flush=True)
    table = _table(rows, peak)
    print("\n".join(table))
    by_name = {r["config"]: r for r in rows}
    ratios = []
    if "ours" in by_name:
        for base in ("A", "A2", "B"):
            if base in by_name:
                ratio = by_name["ours"]["trained_tok_s"] / by_name[base]["trained_tok_s"]
                ratios.append(f"ours/{base} trained tok/s = {ratio:.2f}x")
    print("\n".join(ratios))
    disagree = []
    if "A" in by_name:
        reference = by_name["A"]["heldout_loss"]
        disagree = [r["config"] for r in rows if abs(r["heldout_loss"] - reference) > LOSS_TOLERANCE * reference]
    if args.write_results:
        lines = [
            "# Training throughput (written by bench/train_throughput.py; do not edit)",
            "",
            f"Machine: {device_name()}; {versions()}; Python {platform.python_version()}.",
            f"Data: {stats}. Peak: {peak / 1e9:.1f} GFLOP/s "
            f"({'datasheet bf16' if _cuda() else 'dense fp32 matmul measured in the same run'}).",
            "Useful MFU = 6·N·(non-pad tokens/s) / peak; attention share = useful causal attention FLOPs "
            "(12·L·d·ΣLᵢ²/2) over linear + attention.",
            "",
            *table,
            "",
            *[f"- {r}" for r in ratios],
            "",
        ]
        # Other benches own the sections after this table (`## ...`): keep them.
        path = HERE / "RESULTS.md"
        old = path.read_text() if path.exists() else ""
        others = old[old.find("\n## "):] if "\n## " in old else ""
        path.write_text("\n".join(lines).rstrip() + "\n" + others)
        _plot(rows, HERE / "throughput.png")
    if disagree:
        print(f"held-out losses of {disagree} differ from A's by more than {LOSS_TOLERANCE:.0%}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
