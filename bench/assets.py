"""Benchmark assets: a local BPE tokenizer, a Llama from config, and long-tailed prompt/completion data.

The shapes follow the workplace's shared/reference/perf-calibration/make_assets.py, so the figures here can be
compared with the calibration table: a 12M-parameter Llama (hidden 384, 6 layers) and prompt +
completion lengths drawn from a lognormal with median 60 and p95 ~400 tokens, capped at 1024.
`--scale tiny` shrinks everything for the smoke test.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# The calibration's syllables: a Zipfian lexicon of made-up words, so the tokenizer and the
# model see a language with a realistic token-frequency tail.
_SYLLABLES = [c + v for c in "bcdfghjklmnprstvwz" for v in ["a", "e", "i", "o", "u", "ai", "ou"]]
_PUNCT = [".", ",", "?", "!", ":", ";"]


@dataclass(frozen=True)
class Scale:
    """Sizes of one benchmark scale."""

    vocab: int
    hidden: int
    layers: int
    heads: int
    intermediate: int
    max_len: int
    n_train: int
    n_eval: int
    median_len: int
    p95_len: int


SCALES = {
    # The calibration's setup (12,157,824 parameters, 900 + 100 examples).
    "full": Scale(4000, 384, 6, 6, 1024, 1024, 900, 100, 60, 400),
    # Seconds on 2 cores: only proves that every configuration still runs.
    "tiny": Scale(600, 64, 2, 4, 128, 128, 48, 8, 20, 60),
}


def _lexicon(rng: random.Random, size: int) -> list[str]:
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(_SYLLABLES) for _ in range(rng.choice([1, 1, 2, 2, 2, 3, 3, 4]))))
    ordered = sorted(words)
    rng.shuffle(ordered)
    return ordered


def _chunks(lexicon: list[str], rng: random.Random) -> Iterator[str]:
    # Zipf exponent 1.05, as in the calibration.
    weights = [1.0 / (i + 1) ** 1.05 for i in range(len(lexicon))]
    while True:
        words = rng.choices(lexicon, weights=weights, k=rng.randint(4, 19))
        for j, word in enumerate(words):
            yield " " + (word.capitalize() if j == 0 else word)
        yield rng.choice(_PUNCT[:4]) if rng.random() < 0.9 else ".\n"


def build(out: Path, scale_name: str = "full", seed: int = 0) -> dict[str, object]:
    """Write `model/` (tokenizer + weights), `train.jsonl` and `eval.jsonl` under `out`.

    Args:
        out: Target directory.
        scale_name: A key of `SCALES`.
        seed: Seed of the text, the lengths and the weights.

    Returns:
        Length statistics of the training set in tokens (prompt + completion + EOS).
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from sftjob_trainer.tiny import build_tokenizer

    scale = SCALES[scale_name]
    rng = random.Random(seed)
    lexicon = _lexicon(rng, 12000 if scale_name == "full" else 800)
    stream = _chunks(lexicon, random.Random(seed + 1))
    corpus = ["".join(next(stream) for _ in range(200)) for _ in range(3000 if scale_name == "full" else 300)]
    model_dir = build_tokenizer(out / "model", corpus, scale.vocab)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=scale.hidden, intermediate_size=scale.intermediate,
        num_hidden_layers=scale.layers, num_attention_heads=scale.heads, num_key_value_heads=scale.heads,
        max_position_embeddings=scale.max_len, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(model_dir, safe_serialization=True)

    cache: dict[str, int] = {}

    def ntok(chunk: str) -> int:
        if chunk not in cache:
            cache[chunk] = len(tokenizer(chunk)["input_ids"])
        return cache[chunk]

    text_stream = _chunks(lexicon, random.Random(seed + 2))

    def text(target: int) -> str:
        parts, n = [], 0
        while n < target:
            chunk = next(text_stream)
            if n + ntok(chunk) <= target:
                parts.append(chunk)
                n += ntok(chunk)
        return "".join(parts)

    # sigma puts the 95th percentile (z = 1.6449) at p95_len.
    sigma = math.log(scale.p95_len / scale.median_len) / 1.6449
    lengths_rng = random.Random(seed + 3)
    rows = []
    for _ in range(scale.n_train + scale.n_eval):
        total = round(math.exp(math.log(scale.median_len) + sigma * lengths_rng.gauss(0, 1)))
        total = max(8, min(total, scale.max_len - 1))  # -1 leaves room for EOS
        prompt_len = max(3, round(total * lengths_rng.uniform(0.2, 0.4)))
        completion_len = max(2, total - prompt_len)
        while True:
            prompt, completion = text(prompt_len).lstrip(" "), text(completion_len)
            if len(tokenizer(prompt + completion)["input_ids"]) + 1 <= scale.max_len:
                break
            completion_len -= 4
        rows.append({"prompt": prompt, "completion": completion})
    for name, part in (("train", rows[: scale.n_train]), ("eval", rows[scale.n_train :])):
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))

    totals = sorted(len(tokenizer(r["prompt"] + r["completion"])["input_ids"]) + 1 for r in rows[: scale.n_train])
    stats: dict[str, object] = {
        "examples": len(totals),
        "tokens": sum(totals),
        "p50": totals[len(totals) // 2],
        "p95": totals[int(len(totals) * 0.95)],
        "max": totals[-1],
    }
    (out / "length_stats.json").write_text(json.dumps(stats, indent=1))
    return stats
