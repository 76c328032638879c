"""`make demo`: a tiny base model, a synthetic instruction dataset, one `sftjob run`, base vs fine-tuned accuracy.

The task is copying: "Repeat after me: red cat two" → "red cat two". The words come from a small
vocabulary, so a randomly initialised tiny Llama learns it in a few minutes on 2 CPU cores, and the
held-out rows are word combinations never seen in training (exact match measures generalisation,
not memorisation). The base model, being random, scores about 0%.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

# Single BPE tokens of the tiny tokenizer.
WORDS = [
    "red", "green", "blue", "small", "large", "cat", "dog", "bird", "fish", "tree", "house", "car", "road", "city",
    "river", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "water", "day", "time",
    "people",
]
PROMPT = "Repeat after me: "
# Words per row: long enough that held-out rows are unseen combinations (30^3 = 27,000 of them).
ROW_WORDS = 3


def make_rows(count: int, seed: int) -> list[dict[str, str]]:
    """`count` distinct prompt/completion rows of the copy task."""
    rng = random.Random(seed)  # noqa: S311 - seeded data, not secrets
    seen: set[str] = set()
    rows: list[dict[str, str]] = []
    while len(rows) < count:
        words = " ".join(rng.choice(WORDS) for _ in range(ROW_WORDS))
        if words in seen:
            continue
        seen.add(words)
        # The leading space makes each answer word the same token as in the prompt (byte-level BPE),
        # so every answer token sits at a fixed distance from its source: a tiny model learns that fast.
        rows.append({"prompt": PROMPT + words + "\n", "completion": " " + words})
    return rows


def write_assets(root: Path, train_rows: int = 3000, validation_rows: int = 100) -> None:
    """Build the tiny model + tokenizer and write train.jsonl / validation.jsonl under `root`."""
    from sftjob_trainer.tiny import build_tiny_model, default_corpus

    corpus = default_corpus() + [" ".join(WORDS)] * 50
    build_tiny_model(root / "model", corpus=corpus)
    write_copy_task(root / "data", train_rows, validation_rows, seed=7)


def write_copy_task(directory: Path, train_rows: int, validation_rows: int, seed: int) -> Path:
    """Write `train.jsonl` and `validation.jsonl` of the copy task (distinct rows) into `directory`; returns it."""
    rows = make_rows(train_rows + validation_rows, seed=seed)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:train_rows]))
    (directory / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[train_rows:]))
    return directory


def report(output: Path) -> tuple[float, float, int]:
    """Print and return base vs fine-tuned exact match from `<output>/eval_samples.jsonl`."""
    from sftjob_trainer.artifacts import exact_match

    records = [json.loads(line) for line in (output / "eval_samples.jsonl").read_text().splitlines() if line]
    base, tuned, count = exact_match(records)
    print(f"held-out exact match on {count} prompts: base model {base:.0%}, fine-tuned {tuned:.0%}")
    for record in records[:3]:
        print(f"  {record['prompt'].strip()!r} -> base {record['base']!r}, fine-tuned {record['finetuned']!r}")
    return base, tuned, count


def main(argv: list[str] | None = None) -> int:
    """`python -m sftjob_trainer.demo assets DIR` or `... report OUTPUT_DIR`."""
    parser = argparse.ArgumentParser(prog="sftjob_trainer.demo")
    parser.add_argument("action", choices=["assets", "report"])
    parser.add_argument("path", type=Path)
    args = parser.parse_args(argv)
    if args.action == "assets":
        write_assets(args.path)
        print(f"wrote the tiny model and the copy-task data under {args.path}")
        return 0
    _, tuned, _ = report(args.path)
    return 0 if tuned >= 0.9 else 1


if __name__ == "__main__":
    sys.exit(main())
