"""lm-evaluation-harness tasks (`evaluation.tasks`) on a model already in memory: built-in tasks and custom JSONL.

lm-eval does the work: `HFLM` wraps the loaded model (a transformers model or a PEFT model) and `simple_evaluate`
scores it. Built-in tasks (`arc_easy`, `hellaswag`, ...) run as lm-eval defines them, without a chat template,
so their figures compare with published lm-eval results. A custom task file is validated here, then written with
a task config into the work directory and loaded from there by lm-eval's `TaskManager`:

- `multiple_choice` rows (`{"input", "choices", "label"}`): metric `acc`, the choice with the highest
  log-likelihood after the prompt;
- `generate_until` rows (`{"input", "target"}`): metric `exact_match` of the greedy answer, stopped at EOS or
  the chat template's end-of-turn token, with lm-eval's `remove_whitespace` filter trimming the answer (the
  target is trimmed when written).

Custom prompts are rendered with the tokenizer's chat template when it has one (lm-eval's
`apply_chat_template`): a chat model, and one fine-tuned on chat-formatted rows, answers a question asked as a
user turn, not as raw text to continue. A multiple-choice choice is then scored as the start of the assistant's
answer. A tokenizer without a chat template gets the plain prompt.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from sftjob_api.codes import ErrorCode
from sftjob_api.types import BenchmarkResult, BenchmarkTask
from sftjob_trainer import object_store
from sftjob_trainer.data.templates import end_of_turn_markers, resolve_template
from sftjob_trainer.trainer_error import TrainerError

# Where custom task configs and their data go inside the work directory, and HF datasets' cache of them.
TASKS_DIR = "lm-eval-tasks"
DATASETS_CACHE_DIR = "datasets-cache"
# How both custom metrics aggregate over rows (lm-eval's defaults, spelled out: it warns when they are left unset).
MEAN = {"aggregation": "mean", "higher_is_better": True}


@dataclass(frozen=True)
class TaskScore:
    """One model's score on one task, as lm-eval reports it."""

    metric: str
    """lm-eval's metric (e.g. `acc`, `exact_match`)."""
    value: float
    """The score."""
    stderr: float | None
    """Its standard error (None where lm-eval computes none, e.g. for a single row)."""
    samples: int
    """Rows scored."""


def run_tasks(model: Any, tokenizer: Any, tasks: Sequence[BenchmarkTask], batch_size: int, max_new_tokens: int,
              workdir: Path) -> dict[str, TaskScore]:
    """Score a loaded model on lm-eval tasks.

    The model runs in eval mode; every module's train/eval mode is restored afterwards. A PEFT model is
    scored with its adapter (LoRA, prompt tuning) active. Python's, numpy's and torch's global random
    states are left alone: greedy decoding and log-likelihoods need no seed.

    Args:
        model: A transformers causal LM or a PEFT model around one.
        tokenizer: Its tokenizer (with a padding token).
        tasks: The tasks (`spec.evaluation.tasks`).
        batch_size: Requests scored together.
        max_new_tokens: Longest answer of a custom `generate_until` task.
        workdir: A scratch directory for task configs, their data and the datasets cache.

    Returns:
        Scores by task name.

    Raises:
        TrainerError: InvalidDataset (a bad custom task row, naming file:line), DatasetUnreadable (a custom
            task file that does not exist, or a built-in task whose data cannot be reached), InvalidSpec (an
            unknown built-in task, a name listed twice) or a storage code; the field is the task's in
            `spec.evaluation.tasks`.
    """
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    chat = bool(getattr(tokenizer, "chat_template", None))
    until = end_of_turn_markers(resolve_template("auto", tokenizer, "prompt_completion"))
    seen: set[str] = set()
    for index, task in enumerate(tasks):
        if task.name in seen:
            raise TrainerError(ErrorCode.INVALID_SPEC,
                               f"evaluation.tasks[{index}]: task {task.name} is listed twice: give "
                               "each task its own name", _field(index, "name"))
        seen.add(task.name)
        if task.uri is not None:
            _write_custom_task(index, task, until, max_new_tokens, workdir)
        elif task.name not in _built_in_tasks().all_subtasks + _built_in_tasks().all_groups:
            raise TrainerError(
                ErrorCode.INVALID_SPEC,
                f"evaluation.tasks[{index}]: lm-eval {_lm_eval_version()} has no task or group named "
                f"{task.name} (a tag names several tasks: list them one by one); for a task of your own set uri and "
                "type", _field(index, "name"))
    # A manager of the custom tasks alone: one named like a built-in task is not shadowed by it, and building it
    # indexes a few files, not lm-eval's thousands.
    custom = (TaskManager(include_path=str(workdir / TASKS_DIR), include_defaults=False)
              if any(task.uri is not None for task in tasks) else None)
    scores: dict[str, TaskScore] = {}
    with _quiet(), _modes_restored(model):
        lm = _in_memory_lm(model, tokenizer, batch_size)
        for index, task in enumerate(tasks):
            with _unreachable_data(index, task):
                results = simple_evaluate(
                    model=lm, tasks=[task.name], task_manager=custom if task.uri else _built_in_tasks(),
                    limit=task.limit, apply_chat_template=chat and task.uri is not None, log_samples=False,
                    random_seed=None, numpy_random_seed=None, torch_random_seed=None)
            scores[task.name] = _score(results, index, task.name)
    return scores


def compare(tasks: Sequence[BenchmarkTask], base: dict[str, TaskScore],
            tuned: dict[str, TaskScore]) -> list[BenchmarkResult]:
    """The base and the fine-tuned model's scores side by side, in the order of `tasks`.

    Args:
        tasks: The tasks (`spec.evaluation.tasks`).
        base: The base model's scores (`run_tasks`).
        tuned: The fine-tuned model's scores.

    Returns:
        One result per task; a side without a score for a task is left unset.
    """
    results = []
    for task in tasks:
        before, after = base.get(task.name), tuned.get(task.name)
        known = after or before
        if known is None:
            continue
        results.append(BenchmarkResult(
            task=task.name, metric=known.metric,
            base=before.value if before else None, base_stderr=before.stderr if before else None,
            tuned=after.value if after else None, tuned_stderr=after.stderr if after else None,
            samples=known.samples))
    return results


def _field(index: int, key: str) -> str:
    return f"spec.evaluation.tasks[{index}].{key}"


def _read_rows(index: int, task: BenchmarkTask) -> list[dict[str, Any]]:
    """The validated rows of a custom task file, reduced to the keys its type uses."""
    uri = str(task.uri)
    field = _field(index, "uri")
    try:
        data = object_store.read_bytes(uri)
    except TrainerError as err:
        code = ErrorCode.DATASET_UNREADABLE if err.code == object_store.NOT_FOUND else err.code
        raise TrainerError(code, f"evaluation.tasks[{index}] ({task.name}): {err.message}", field) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise TrainerError(ErrorCode.INVALID_DATASET, f"{uri}: not UTF-8 text ({err.reason} at byte {err.start}): save "
                           "the task as UTF-8 JSONL", field) from None
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise TrainerError(ErrorCode.INVALID_DATASET,
                               f"{uri}:{number}: not valid JSON ({err.msg}, column {err.colno}): "
                               "write one JSON object per line", field) from None
        problem = _row_problem(row, task.type)
        if problem:
            raise TrainerError(ErrorCode.INVALID_DATASET, f"{uri}:{number}: {problem}", field)
        keys = ("input", "choices", "label") if task.type == "multiple_choice" else ("input", "target")
        rows.append({key: row[key] for key in keys})
    if not rows:
        raise TrainerError(ErrorCode.INVALID_DATASET, f"{uri}: no rows: write one JSON object per line", field)
    return rows


def _row_problem(row: Any, kind: str | None) -> str | None:
    """What is wrong with one row of a custom task, and what to do; None when it is usable."""
    shape = ('{"input": "...", "choices": ["...", "..."], "label": 0}' if kind == "multiple_choice"
             else '{"input": "...", "target": "..."}')
    if not isinstance(row, dict):
        return f"expected a JSON object like {shape}"
    if not isinstance(row.get("input"), str) or not row["input"].strip():
        return f'"input" must be a non-empty string (the prompt), as in {shape}'
    if kind == "generate_until":
        if not isinstance(row.get("target"), str):
            return f'"target" must be a string (the expected answer), as in {shape}'
        return None
    choices, label = row.get("choices"), row.get("label")
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
        return f'"choices" must be a list of at least two non-empty strings, as in {shape}'
    # bool is an int in Python, but `true` is no index.
    if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < len(choices):
        return f'"label" must be the index of the right choice, 0 to {len(choices) - 1}, got {json.dumps(label)}'
    return None


def _write_custom_task(index: int, task: BenchmarkTask, until: list[str], max_new_tokens: int,
                       workdir: Path) -> None:
    """Validate a custom task file and write it, with its lm-eval task config, under the work directory."""
    import yaml

    rows = _read_rows(index, task)
    folder = workdir / TASKS_DIR / task.name
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "test.jsonl"
    if task.type == "generate_until":
        # The target goes in trimmed and is read as a field, not through a Jinja template: lm-eval parses a
        # templated target that looks like a list ("[1, 2]") into a list.
        rows = [{"input": row["input"], "target": row["target"].strip()} for row in rows]
    data.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    config: dict[str, Any] = {
        "task": task.name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}, "cache_dir": str(workdir / DATASETS_CACHE_DIR)},
        "test_split": "test",
        "output_type": task.type,
        "doc_to_text": "input",
    }
    if task.type == "multiple_choice":
        config |= {"doc_to_choice": "choices", "doc_to_target": "label", "metric_list": [{"metric": "acc", **MEAN}]}
    else:
        config |= {
            "doc_to_target": "target",
            "generation_kwargs": {"until": until, "do_sample": False, "max_gen_toks": max_new_tokens},
            "filter_list": [{"name": "trimmed",
                             "filter": [{"function": "remove_whitespace"}, {"function": "take_first"}]}],
            "metric_list": [{"metric": "exact_match", **MEAN}],
        }
    (folder / "task.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")


def _in_memory_lm(model: Any, tokenizer: Any, batch_size: int) -> Any:
    """lm-eval's `HFLM` around the loaded model.

    HFLM takes any module with `config`, `device`, a forward returning `logits` and `generate`, so a PEFT
    model goes in as it is, adapter active. Prompt tuning prepends virtual tokens inside the forward, so its
    logits are longer than the input: HFLM finds a continuation's logits from the end, which skips them.
    """
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)


@contextmanager
def _modes_restored(model: Any) -> Iterator[None]:
    """Restore every module's train/eval mode on exit (HFLM switches the whole model to eval)."""
    modes = [(module, module.training) for module in model.modules()]
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


@contextmanager
def _quiet() -> Iterator[None]:
    """lm-eval's logging below errors and datasets' progress bars off for the duration.

    lm-eval warns on every run about a model passed in memory and logs seeds and task lists: chatter in a
    trainer log. Its own progress bars over requests stay (they show a long benchmark advancing).
    """
    import datasets

    logger = logging.getLogger("lm_eval")
    level = logger.level
    bars_were_off = datasets.utils.are_progress_bars_disabled()
    logger.setLevel(logging.ERROR)
    datasets.utils.disable_progress_bars()
    try:
        yield
    finally:
        logger.setLevel(level)
        if not bars_were_off:
            datasets.utils.enable_progress_bars()


@cache
def _built_in_tasks() -> Any:
    """lm-eval's TaskManager over its own task configs, indexed once per process (thousands of files: seconds)."""
    from lm_eval.tasks import TaskManager

    return TaskManager()


def _lm_eval_version() -> str:
    from importlib.metadata import version

    return version("lm-eval")


@contextmanager
def _unreachable_data(index: int, task: BenchmarkTask) -> Iterator[None]:
    """A built-in task whose dataset cannot be downloaded (offline, no cached copy) as a TrainerError naming it."""
    from datasets.exceptions import DatasetNotFoundError

    try:
        yield
    # datasets raises ConnectionError when the Hub cannot be reached and no cached copy exists (offline mode
    # included), DatasetNotFoundError for a dataset the Hub does not have or gates.
    except (ConnectionError, DatasetNotFoundError) as err:
        raise TrainerError(
            ErrorCode.DATASET_UNREADABLE,
            f"evaluation.tasks[{index}]: the data of lm-eval task {task.name} cannot be reached ({err}): let the "
            "trainer reach the Hugging Face Hub, or put the dataset into the Hugging Face cache it reads "
            "(HF_HOME or HF_DATASETS_CACHE)",
            _field(index, "name")) from None


def _score(results: dict[str, Any], index: int, name: str) -> TaskScore:
    """The first metric lm-eval reports for a task (its first filter's), with its stderr and the rows scored."""
    values = results["results"].get(name, {})
    key = next((key for key in values if "," in key and "_stderr," not in key), None)
    if key is None:
        raise TrainerError(ErrorCode.INVALID_SPEC,
                           f"evaluation.tasks[{index}]: lm-eval reports no overall score for group "
                           f"{name}: list its tasks one by one", _field(index, "name"))
    metric, _, filter_name = key.partition(",")
    stderr = values.get(f"{metric}_stderr,{filter_name}")
    # lm-eval writes "N/A" where it computes no stderr.
    known = isinstance(stderr, float | int) and math.isfinite(stderr)
    # One task or group per simple_evaluate call: every row counted belongs to it.
    samples = sum(int(counts["effective"]) for counts in results["n-samples"].values())
    return TaskScore(metric=metric, value=float(values[key]), stderr=float(stderr) if known else None,
                     samples=samples)
