"""Reading prompts, seed tasks and evaluation texts (sftjob_trainer.distill.prompts), and the reply cache's keys and
part files (sftjob_trainer.distill.cache): no Ray, no HTTP."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from distill_helpers import make_spec, write_jsonl

from sftjob_api.types import DataSource, PromptsSpec
from sftjob_trainer.distill.cache import ReplyStore, dataset_key, request_key
from sftjob_trainer.distill.prompts import (
    PromptError,
    PromptItem,
    contamination_sources,
    load_prompts,
    load_seed_tasks,
    load_texts,
    to_prompt,
)
from sftjob_trainer.distill.teacher_api import Reply, TeacherConfig
from sftjob_trainer.trainer_error import TrainerError


def test_each_schema_becomes_turns_ending_with_a_user_turn() -> None:
    assert to_prompt({"prompt": "Hi?"}, "prompt", 1, None).messages == (("user", "Hi?"),)
    alpaca = to_prompt({"instruction": "Translate.", "input": "bonjour", "system": "Be terse."}, "alpaca", 2, None)
    assert alpaca.messages == (("system", "Be terse."), ("user", "Translate.\n\nbonjour"))
    chat = to_prompt({"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "A?"},
                                   {"role": "assistant", "content": "old answer"}, {"role": "user", "content": "B?"},
                                   {"role": "assistant", "content": "old answer 2"}], "answer": 7}, "messages", 3,
                     "answer")
    assert chat.messages[-1] == ("user", "B?") and len(chat.messages) == 4 and chat.reference == "7"
    assert chat.text == "A?\nB?"
    with pytest.raises(PromptError, match="no user turn"):
        to_prompt({"messages": [{"role": "system", "content": "S"}]}, "messages", 1, None)
    with pytest.raises(PromptError, match="no reference answer in column 'answer'"):
        to_prompt({"prompt": "Hi?"}, "prompt", 1, "answer")


def test_the_system_prompt_goes_first_unless_the_row_has_one() -> None:
    item = PromptItem(messages=(("user", "Q"),))
    assert item.with_system("Explain.") == (("system", "Explain."), ("user", "Q"))
    assert item.with_system(None) == item.messages
    own = PromptItem(messages=(("system", "Mine."), ("user", "Q")))
    assert own.with_system("Explain.") == own.messages


def test_load_prompts_renames_limits_and_names_the_bad_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"question": "What is 1 plus 1?", "answer": 2},
                                              {"question": "What is 2 plus 2?", "answer": 4},
                                              {"text": "no prompt here"}])
    spec = PromptsSpec(uri=str(path), column_map={"question": "prompt"}, limit=2)
    items = load_prompts(spec, "answer")
    assert [(i.text, i.reference, i.line) for i in items] == [("What is 1 plus 1?", "2", 1),
                                                              ("What is 2 plus 2?", "4", 2)]
    with pytest.raises(TrainerError) as bad:
        load_prompts(spec.model_copy(update={"limit": None}), None)
    assert bad.value.code == "InvalidDataset" and f"{path}:3: cannot tell the prompt" in bad.value.message
    with pytest.raises(TrainerError) as missing:
        load_prompts(PromptsSpec(uri=str(tmp_path / "none.jsonl")), None)
    assert missing.value.code == "DatasetUnreadable" and missing.value.field == "distillation.prompts.uri"


def test_seed_tasks_and_evaluation_texts(tmp_path: Path) -> None:
    seeds = write_jsonl(tmp_path / "s.jsonl", [{"instruction": "Sort.", "input": "3 1 2"}, {"prompt": "Name a gas."}])
    assert load_seed_tasks(str(seeds)) == ["Sort.\n\n3 1 2", "Name a gas."]
    validation = write_jsonl(tmp_path / "v.jsonl", [{"messages": [{"role": "user", "content": "Q1"},
                                                                  {"role": "assistant", "content": "A1"}]}])
    task = write_jsonl(tmp_path / "t.jsonl", [{"input": "Q2", "choices": ["x", "y"], "label": 0}])
    spec = make_spec("http://127.0.0.1:9/v1", "p.jsonl", str(tmp_path),
                     filters={"decontaminate": {"uris": [str(task)]}})
    spec = spec.model_copy(update={
        "dataset": spec.dataset.model_copy(update={"validation": DataSource(uri=str(validation))}),
        "evaluation": spec.evaluation.model_validate({"tasks": [{"name": "mine", "uri": str(task),
                                                                  "type": "multiple_choice"}]})})
    sources = contamination_sources(spec)
    assert [field for _, field in sources] == ["dataset.validation.uri", "evaluation.tasks[0].uri",
                                               "distillation.filters.decontaminate.uris[0]"]
    assert load_texts(sources) == ["user", "Q1", "assistant", "A1", "Q2", "x", "y", "Q2", "x", "y"]


def test_request_keys_change_with_what_decides_the_answer() -> None:
    config = TeacherConfig(endpoint="http://t:8000/v1", model="m")
    turns = (("user", "Q"),)
    key = request_key(config, turns, 0)
    assert key == request_key(dataclasses.replace(config, endpoint="http://t:8000/v1/", concurrency=64,
                                                  timeout_s=1, max_retries=0), turns, 0)
    changed = [dataclasses.replace(config, model="n"), dataclasses.replace(config, temperature=0.1),
               dataclasses.replace(config, top_p=0.9), dataclasses.replace(config, max_tokens=7)]
    assert len({key, *(request_key(c, turns, 0) for c in changed), request_key(config, turns, 1),
                request_key(config, (("user", "Q2"),), 0)}) == 7
    assert dataset_key([key]) != dataset_key([key, key])


def test_reply_store_appends_parts_and_skips_unreadable_lines(tmp_path: Path) -> None:
    store = ReplyStore(str(tmp_path), flush_replies=2, flush_seconds=3600)
    store.add([Reply("a", "1")])
    assert ReplyStore(str(tmp_path)).load() == {}  # buffered, not written yet
    store.add([Reply("b", "2", reasoning="r", finish_reason="stop", prompt_tokens=3, completion_tokens=4)])
    store.add([Reply("c", "", error="boom")])
    store.flush()
    parts = sorted((tmp_path / "cache" / "distill" / "replies").iterdir())
    assert len(parts) == 2
    parts[0].write_text(parts[0].read_text() + "{not json\n")
    loaded = ReplyStore(str(tmp_path)).load()
    assert loaded == {"a": Reply("a", "1"), "b": Reply("b", "2", "r", "stop", 3, 4), "c": Reply("c", error="boom")}
