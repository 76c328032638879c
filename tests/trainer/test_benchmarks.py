"""lm-evaluation-harness benchmarks on the real SmolLM2-135M-Instruct: custom tasks, PEFT models, and errors.

Every score is checked against the same items scored here without lm-eval: multiple-choice accuracy from the
model's own loss on each choice, exact match from the trainer's greedy `generate_answers`. The task files and
where their items come from are in fixtures/benchmarks/README.md.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sftjob_api.types import BenchmarkResult, BenchmarkTask, ModelSpec
from sftjob_trainer.artifacts import generate_answers
from sftjob_trainer.benchmarks import TaskScore, compare, run_tasks
from sftjob_trainer.model_loading import load_tokenizer
from sftjob_trainer.trainer_error import TrainerError

pytestmark = pytest.mark.slow

FIXTURES = Path(__file__).parent / "fixtures" / "benchmarks"
CHOICE_FILE = FIXTURES / "general_knowledge.jsonl"
ANSWER_FILE = FIXTURES / "short_answers.jsonl"
CHOICES = BenchmarkTask(name="general_knowledge", uri=str(CHOICE_FILE), type="multiple_choice")
ANSWERS = BenchmarkTask(name="short_answers", uri=str(ANSWER_FILE), type="generate_until")
MAX_NEW_TOKENS = 16
BATCH = 8
# Chance on four choices is 0.25; the real model gets 7 of the 8 easy questions right.
ABOVE_CHANCE = 0.5


def rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def chat_prompt(tokenizer: Any, question: str) -> str:
    """The question as a user turn, ending with the assistant's header: what the model answers in a chat."""
    return str(tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                             add_generation_prompt=True))


def choice_log_likelihood(model: Any, tokenizer: Any, context: str, choice: str) -> float:
    """log P(choice | context) summed over the choice's tokens, from the model's own loss on them."""
    import torch

    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    ids = tokenizer(context + choice, add_special_tokens=False)["input_ids"]
    labels = [-100] * len(context_ids) + ids[len(context_ids):]
    with torch.no_grad():
        loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss
    return -float(loss) * (len(ids) - len(context_ids))


def accuracy_here(model: Any, tokenizer: Any, items: list[dict[str, Any]]) -> float:
    """The share of items whose most likely choice is the labelled one."""
    right = 0
    for item in items:
        prompt = chat_prompt(tokenizer, item["input"])
        scores = [choice_log_likelihood(model, tokenizer, prompt, choice) for choice in item["choices"]]
        right += scores.index(max(scores)) == item["label"]
    return right / len(items)


def greedy_answers(model: Any, tokenizer: Any, items: list[dict[str, str]]) -> list[str]:
    """The trainer's greedy answers to the items' prompts, asked as chat turns."""
    prompts = [tokenizer(chat_prompt(tokenizer, item["input"]), add_special_tokens=False)["input_ids"]
               for item in items]
    return generate_answers(model, tokenizer, prompts, MAX_NEW_TOKENS, [tokenizer.eos_token_id])


def exact_match_here(model: Any, tokenizer: Any, items: list[dict[str, str]]) -> float:
    """The share of greedy answers equal to their target, surrounding whitespace aside."""
    answers = greedy_answers(model, tokenizer, items)
    return sum(a.strip() == item["target"].strip() for a, item in zip(answers, items, strict=True)) / len(items)


def mean_stderr(value: float, n: int) -> float:
    """The standard error of a mean of n 0/1 scores: the sample standard deviation over sqrt(n)."""
    return math.sqrt(value * (1 - value) / (n - 1))


@pytest.fixture(scope="module")
def tokenizer(smollm2_gguf: Path, smollm2_dir: Path) -> Any:
    return load_tokenizer(smollm2_dir, ModelSpec(source=str(smollm2_gguf)))


@pytest.fixture(scope="module")
def base_run(smollm2_gguf_model: Any, tokenizer: Any,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, TaskScore], list[bool]]]:
    """The base model's scores on the custom tasks, run in train mode, and every module's mode afterwards."""
    model = smollm2_gguf_model
    was_training = model.training
    model.train()
    try:
        scores = run_tasks(model, tokenizer, [CHOICES, ANSWERS], BATCH, MAX_NEW_TOKENS,
                           tmp_path_factory.mktemp("bench-base"))
        yield scores, [module.training for module in model.modules()]
    finally:
        model.train(was_training)


def test_custom_tasks_score_what_the_model_answers(base_run: tuple[dict[str, TaskScore], list[bool]],
                                                   smollm2_gguf_model: Any, tokenizer: Any) -> None:
    scores, modes_after = base_run
    choice_items, answer_items = rows(CHOICE_FILE), rows(ANSWER_FILE)

    choices = scores[CHOICES.name]
    assert choices.metric == "acc" and choices.samples == len(choice_items) == 8
    assert choices.value == accuracy_here(smollm2_gguf_model, tokenizer, choice_items)
    assert choices.value > ABOVE_CHANCE
    assert choices.stderr == pytest.approx(mean_stderr(choices.value, 8))

    answers = scores[ANSWERS.name]
    assert answers.metric == "exact_match" and answers.samples == len(answer_items) == 6
    # Some answers match (one only after trimming the target's trailing space), some do not: a score strictly
    # between 0 and 1 shows both outcomes are counted.
    assert 0 < answers.value < 1
    assert answers.value == exact_match_here(smollm2_gguf_model, tokenizer, answer_items)
    assert answers.stderr == pytest.approx(mean_stderr(answers.value, 6))

    # Run in train mode, left in train mode (lm-eval switches the model to eval while it scores).
    assert all(modes_after)


def test_compare_pairs_base_and_tuned_scores_in_task_order() -> None:
    base = {"a": TaskScore("acc", 0.5, 0.1, 8), "b": TaskScore("exact_match", 0.25, None, 4)}
    tuned = {"b": TaskScore("exact_match", 0.75, 0.2, 4), "a": TaskScore("acc", 0.625, 0.09, 8),
             "c": TaskScore("acc", 0.5, 0.5, 2)}
    tasks = [BenchmarkTask(name="b", uri="b.jsonl", type="generate_until"), BenchmarkTask(name="a"),
             BenchmarkTask(name="c"), BenchmarkTask(name="unscored")]
    assert compare(tasks, base, tuned) == [
        BenchmarkResult(task="b", metric="exact_match", base=0.25, base_stderr=None, tuned=0.75, tuned_stderr=0.2,
                        samples=4),
        BenchmarkResult(task="a", metric="acc", base=0.5, base_stderr=0.1, tuned=0.625, tuned_stderr=0.09, samples=8),
        BenchmarkResult(task="c", metric="acc", base=None, base_stderr=None, tuned=0.5, tuned_stderr=0.5, samples=2),
    ]


def test_a_fresh_lora_adapter_scores_exactly_like_the_base(base_run: tuple[dict[str, TaskScore], list[bool]],
                                                           smollm2_gguf_model: Any, tokenizer: Any,
                                                           tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model

    base_scores, _ = base_run
    grads = [p.requires_grad for p in smollm2_gguf_model.parameters()]
    # LoRA starts with B = 0: the adapter adds exactly nothing until it is trained.
    tuned = get_peft_model(smollm2_gguf_model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                          task_type="CAUSAL_LM"))
    try:
        scores = run_tasks(tuned, tokenizer, [CHOICES, ANSWERS], BATCH, MAX_NEW_TOKENS, tmp_path)
    finally:
        tuned.unload()  # the shared model without the adapter's layers again
        for parameter, grad in zip(smollm2_gguf_model.parameters(), grads, strict=True):
            parameter.requires_grad_(grad)
    assert scores == {name: base_scores[name] for name in (CHOICES.name, ANSWERS.name)}


def test_a_prompt_tuned_model_is_scored_with_its_virtual_tokens(smollm2_gguf_model: Any, tokenizer: Any,
                                                                tmp_path: Path) -> None:
    import torch
    from peft import PromptTuningConfig, get_peft_model

    grads = [p.requires_grad for p in smollm2_gguf_model.parameters()]
    torch.manual_seed(0)
    tuned = get_peft_model(smollm2_gguf_model, PromptTuningConfig(num_virtual_tokens=8, task_type="CAUSAL_LM"))
    try:
        tuned.eval()
        # Random virtual tokens before the chat turn derail the answers (no answer matches a target), so the
        # targets here are the trainer's own greedy answers: every one must match.
        items = rows(ANSWER_FILE)[:3]
        answers = greedy_answers(tuned, tokenizer, items)
        own = [{"input": item["input"], "target": answer} for item, answer in zip(items, answers, strict=True)]
        (tmp_path / "own.jsonl").write_text("".join(json.dumps(row) + "\n" for row in own))
        # Only the first rows of the choices (`limit`): this run is about the virtual tokens, not every item.
        tasks = [CHOICES.model_copy(update={"limit": 4}),
                 BenchmarkTask(name="own_answers", uri=str(tmp_path / "own.jsonl"), type="generate_until")]
        scores = run_tasks(tuned, tokenizer, tasks, BATCH, MAX_NEW_TOKENS, tmp_path)
        assert scores[CHOICES.name].samples == 4
        assert scores[CHOICES.name].value == accuracy_here(tuned, tokenizer, rows(CHOICE_FILE)[:4])
        assert scores["own_answers"] == TaskScore("exact_match", 1.0, 0.0, 3)
    finally:
        for parameter, grad in zip(smollm2_gguf_model.parameters(), grads, strict=True):
            parameter.requires_grad_(grad)


@pytest.mark.parametrize(("kind", "lines", "line", "says"), [
    ("multiple_choice", ['{"input": "q", "choices": ["a", "b"], "label": 0}', '{"input": "q", "choices": ['], 2,
     "not valid JSON"),
    ("multiple_choice", ['{"input": "q", "choices": ["a", "b"]}'], 1, '"label" must be the index of the right choice'),
    ("multiple_choice", ["", '{"input": "q", "choices": ["a", "b"], "label": 2}'], 2, "0 to 1, got 2"),
    ("multiple_choice", ['{"input": "q", "choices": ["a"], "label": 0}'], 1, "at least two non-empty strings"),
    ("generate_until", ['{"input": "q", "target": "a"}', '{"input": "q", "answer": "a"}'], 2,
     '"target" must be a string'),
    ("generate_until", ['["q", "a"]'], 1, "expected a JSON object"),
])
def test_a_bad_custom_task_row_fails_naming_file_and_line(kind: str, lines: list[str], line: int, says: str,
                                                          tokenizer: Any, tmp_path: Path) -> None:
    path = tmp_path / "task.jsonl"
    path.write_text("\n".join(lines) + "\n")
    bad = BenchmarkTask(name="bad", uri=str(path), type=kind)
    with pytest.raises(TrainerError) as caught:
        run_tasks(None, tokenizer, [CHOICES, bad], BATCH, MAX_NEW_TOKENS, tmp_path)
    assert caught.value.code == "InvalidDataset"
    assert caught.value.field == "spec.evaluation.tasks[1].uri"
    assert caught.value.message.startswith(f"{path}:{line}: ")
    assert says in caught.value.message


def test_custom_tasks_are_read_from_s3_and_missing_ones_are_named(s3_env: Any, tokenizer: Any,
                                                                  tmp_path: Path) -> None:
    bucket = s3_env.create_bucket("bench-tasks")
    s3_env.client().put_object(Bucket="bench-tasks", Key="mc.jsonl",
                               Body=b'{"input": "q", "choices": ["a", "b"], "label": 5}\n')
    on_s3 = BenchmarkTask(name="on_s3", uri=f"{bucket}/mc.jsonl", type="multiple_choice")
    with pytest.raises(TrainerError) as caught:
        run_tasks(None, tokenizer, [on_s3], BATCH, MAX_NEW_TOKENS, tmp_path)
    assert (caught.value.code, caught.value.field) == ("InvalidDataset", "spec.evaluation.tasks[0].uri")
    assert caught.value.message.startswith("s3://bench-tasks/mc.jsonl:1: ")

    missing = BenchmarkTask(name="missing", uri=str(tmp_path / "nope.jsonl"), type="generate_until")
    with pytest.raises(TrainerError) as caught:
        run_tasks(None, tokenizer, [missing], BATCH, MAX_NEW_TOKENS, tmp_path)
    assert (caught.value.code, caught.value.field) == ("DatasetUnreadable", "spec.evaluation.tasks[0].uri")
    assert "nope.jsonl" in caught.value.message


def test_a_task_name_listed_twice_is_refused(tokenizer: Any, tmp_path: Path) -> None:
    with pytest.raises(TrainerError) as caught:
        run_tasks(None, tokenizer, [CHOICES, ANSWERS, CHOICES], BATCH, MAX_NEW_TOKENS, tmp_path)
    assert (caught.value.code, caught.value.field) == ("InvalidSpec", "spec.evaluation.tasks[2].name")
    assert "general_knowledge is listed twice" in caught.value.message


def test_built_in_tasks_fail_clearly_when_unknown_or_out_of_reach(smollm2_gguf_model: Any, tokenizer: Any,
                                                                   tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets
    import huggingface_hub

    # No Hub here: offline mode makes that immediate instead of a connection timeout. datasets and the Hub
    # client read these variables at import, so their module settings are switched too; an empty cache
    # makes sure no copy of the dataset is found anywhere.
    for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets")

    with pytest.raises(TrainerError) as caught:
        run_tasks(smollm2_gguf_model, tokenizer, [CHOICES, BenchmarkTask(name="arc_easyy")], BATCH, MAX_NEW_TOKENS,
                  tmp_path)
    assert (caught.value.code, caught.value.field) == ("InvalidSpec", "spec.evaluation.tasks[1].name")
    assert "no task or group named arc_easyy" in caught.value.message

    started = time.monotonic()
    with pytest.raises(TrainerError) as caught:
        run_tasks(smollm2_gguf_model, tokenizer, [BenchmarkTask(name="arc_easy", limit=2)], BATCH, MAX_NEW_TOKENS,
                  tmp_path)
    # lm-eval's task index was built by the first call: what is left is the failed download.
    assert time.monotonic() - started < 10
    assert (caught.value.code, caught.value.field) == ("DatasetUnreadable", "spec.evaluation.tasks[0].name")
    assert "lm-eval task arc_easy cannot be reached" in caught.value.message
    assert "allenai/ai2_arc" in caught.value.message
