"""The classes of mask failures seen on real chat templates, one named test each, against the oracle.

Each test renders a conversation through sftjob and through transformers' `apply_chat_template`
(corpus_helpers.oracle_example) and compares the labels token for token; the templates are the
corpus's real ones (fixtures/templates, sources in SOURCES.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from corpus_helpers import FAMILIES, oracle_example, oracle_messages, read_rows, template_text
from data_helpers import write_jsonl

from sftjob_api.types import DatasetSpec
from sftjob_trainer.data import IGNORE_INDEX, DataError, prepare_dataset
from sftjob_trainer.data.conversation import Conversation, Message
from sftjob_trainer.data.jinja_template import JinjaTemplate
from sftjob_trainer.data.rendering import TemplateError


def trained_text(tokenizer: Any, ids: list[int], labels: list[int]) -> str:
    return tokenizer.decode([t for t, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX])


def chat(*turns: tuple[str, str]) -> list[dict[str, Any]]:
    return [{"role": role, "content": content} for role, content in turns]


def encode_rows(tmp_path: Path, tokenizer: Any, rows: list[dict[str, Any]], **fields: Any) -> list[Any]:
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    spec = DatasetSpec.model_validate({"train": {"uri": str(path)}, **fields})
    return prepare_dataset(spec, tokenizer, seed=0).train


def check_against_oracle(tokenizer: Any, name: str, messages: list[dict[str, Any]], example: Any,
                         tools: list[dict[str, Any]] | None = None) -> str:
    ids, labels, text = oracle_example(tokenizer, FAMILIES[name], messages, tools)
    assert example.input_ids == ids, text
    assert example.labels == labels, trained_text(tokenizer, example.input_ids, example.labels)
    return trained_text(tokenizer, ids, labels)


# 1. A generation prompt with content: DeepSeek-R1-Distill's prompt ends `<｜Assistant｜><think>\n`.

def test_generation_prompt_with_content_trains_the_answer_not_its_copy_in_the_question(
        family_tokenizers: dict[str, Any], tmp_path: Path) -> None:
    tokenizer = family_tokenizers["deepseek-r1-distill"]
    messages = chat(("user", 'Say exactly "The sky is blue." and nothing else.'), ("assistant", "The sky is blue."),
                    ("user", "Again."), ("assistant", "The sky is blue."))
    [example] = encode_rows(tmp_path, tokenizer, [{"messages": messages}])
    trained = check_against_oracle(tokenizer, "deepseek-r1-distill", messages, example)
    assert trained == "The sky is blue.<｜end▁of▁sentence｜>" * 2


def test_reasoning_a_template_cannot_render_fails_preflight_naming_the_setting(
        family_tokenizers: dict[str, Any], tmp_path: Path) -> None:
    # The R1-distill template cuts every answer up to </think>: its reasoning cannot carry loss.
    rows = [{"messages": chat(("user", f"What is {i} + {i}?"),
                              ("assistant", f"<think>\n{i} and {i} make {2 * i}.\n</think>\n\n{2 * i}"))}
            for i in range(3)]
    with pytest.raises(DataError) as err:
        encode_rows(tmp_path, family_tokenizers["deepseek-r1-distill"], rows)
    assert err.value.code == "PreflightFailed"
    assert err.value.field == "dataset.reasoning"
    assert "cannot render reasoning" in str(err.value) and "rows.jsonl:1" in str(err.value)
    assert "reasoning: drop" in str(err.value)


# 2. A system prompt moved into the last user turn (Mistral v0.3), and its tool-call turns.

def test_system_prompt_moved_into_the_last_user_turn_trains_every_answer_from_its_first_token(
        family_tokenizers: dict[str, Any], tmp_path: Path) -> None:
    tokenizer = family_tokenizers["mistral-v0.3"]
    messages = chat(("system", "Answer in one word."), ("user", "Capital of France?"), ("assistant", "Paris"),
                    ("user", "Of Italy?"), ("assistant", "Rome"))
    [example] = encode_rows(tmp_path, tokenizer, [{"messages": messages}])
    assert check_against_oracle(tokenizer, "mistral-v0.3", messages, example) == " Paris</s> Rome</s>"


def test_mistral_tool_call_turns_are_trained_in_the_native_syntax(family_tokenizers: dict[str, Any],
                                                                 tmp_path: Path) -> None:
    tokenizer = family_tokenizers["mistral-v0.3"]
    call = {"id": "a1b2c3d4e", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                               "parameters": {"type": "object",
                                                              "properties": {"city": {"type": "string"}}}}}]
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "Weather in Oslo?"}, {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "content": '{"temp": 3}', "tool_call_id": "a1b2c3d4e"},
        {"role": "assistant", "content": "It is 3 degrees."}]
    [example] = encode_rows(tmp_path, tokenizer, [{"messages": messages, "tools": tools}])
    trained = check_against_oracle(tokenizer, "mistral-v0.3", messages, example, tools)
    assert trained.startswith('[TOOL_CALLS] [{"name": "get_weather"') and trained.endswith(" It is 3 degrees.</s>")


# 3. Earlier turns rendered differently once later turns follow (Qwen3 with reasoning and tool calls).

def test_earlier_turns_rendered_differently_are_located_from_the_template_structure(
        family_tokenizers: dict[str, Any], tmp_path: Path) -> None:
    tokenizer = family_tokenizers["qwen-3"]
    # LLaMA-Factory's reasoning + tool-call demo in OpenAI form (reasoning_content, tool_calls, tool results):
    # Qwen3 renders the thoughts of the turns after the last question only, so earlier turns change once
    # later ones follow.
    messages, tools = oracle_messages("reasoning", read_rows("reasoning")[1], native_reasoning=True)
    [example] = encode_rows(tmp_path, tokenizer, [{"messages": messages, "tools": tools}])
    trained = check_against_oracle(tokenizer, "qwen-3", messages, example, tools)
    assert trained.count("<|im_end|>") == 4 and trained.count("<think>") == 2  # thoughts after the last question


# 4. A template that appends EOS after the last turn (Phi-3): every turn ends at its end-of-turn token.

def test_eos_appended_after_the_last_turn_is_not_trained(family_tokenizers: dict[str, Any], tmp_path: Path) -> None:
    tokenizer = family_tokenizers["phi-3"]
    messages = chat(("user", "Hi"), ("assistant", "Hello!"), ("user", "Bye"), ("assistant", "Goodbye!"))
    [example] = encode_rows(tmp_path, tokenizer, [{"messages": messages}])
    assert check_against_oracle(tokenizer, "phi-3", messages, example) == "Hello!<|end|>Goodbye!<|end|>"
    assert tokenizer.decode(example.input_ids).endswith("<|end|>\n<|endoftext|>")


# 5. `{% generation %}` markers (TRL's training templates ship with them).

@pytest.mark.parametrize("name", ["qwen-3-training", "llama-3-training"])
def test_generation_markers_are_rendered_like_transformers_does(family_tokenizers: dict[str, Any], name: str,
                                                               tmp_path: Path) -> None:
    assert "{% generation %}" in template_text(name).replace("{%- generation %}", "{% generation %}")
    tokenizer = family_tokenizers[name]
    messages = chat(("user", "Hi"), ("assistant", "Hello!"), ("user", "Bye"), ("assistant", "Goodbye!"))
    [example] = encode_rows(tmp_path, tokenizer, [{"messages": messages}])
    check_against_oracle(tokenizer, name, messages, example)


# 6. ShareGPT function_call / observation turns (glaive): the template's native tool-call syntax.

def test_sharegpt_function_calls_render_in_the_template_native_tool_syntax(family_tokenizers: dict[str, Any],
                                                                          tmp_path: Path) -> None:
    tokenizer = family_tokenizers["qwen-2.5"]
    row = read_rows("toolcalls_sharegpt")[0]
    [example] = encode_rows(tmp_path, tokenizer, [row])
    messages, tools = oracle_messages("toolcalls_sharegpt", row, native_reasoning=False)
    trained = check_against_oracle(tokenizer, "qwen-2.5", messages, example, tools)
    call = ('<tool_call>\n{"name": "calculate_area", "arguments": {"shape": "rectangle", "dimensions": [5, 3]}}\n'
            "</tool_call>")
    assert trained.startswith(call + "<|im_end|>")
    assert '"from"' not in tokenizer.decode(example.input_ids) and "function_call" not in trained


# The span rule on a template of our own: content plus the end-of-turn token, for every turn.

def test_whitespace_the_template_writes_around_the_content_stays_in_the_span() -> None:
    template = ("{%- for m in messages %}{{- '<|im_start|>' + m['role'] + '\\n' }}"
                "{%- if m['role'] == 'assistant' %}{{- '  ' + m['content'] | trim + ' ' }}"
                "{%- else %}{{- m['content'] }}{%- endif %}{{- '<|im_end|>\\n' }}{%- endfor %}"
                "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")
    conv = Conversation((Message("user", "one"), Message("assistant", "  two  "), Message("user", "three"),
                         Message("assistant", "\nfour")), "chat", 1)
    rendered = JinjaTemplate("inline", template, {"eos_token": "<|im_end|>"}).render(conv, "assistant")
    assert [rendered.text[s:e] for s, e in rendered.trained] == ["  two <|im_end|>", "  four <|im_end|>"]


def test_a_template_that_drops_tool_calls_is_refused(family_tokenizers: dict[str, Any], tmp_path: Path) -> None:
    rows = [{"messages": [{"role": "user", "content": "Weather?"},
                          {"role": "assistant", "content": "Checking.",
                           "tool_calls": [{"type": "function", "function": {"name": "weather", "arguments": "{}"}}]},
                          {"role": "tool", "content": "sunny"}, {"role": "assistant", "content": "Sunny."}]}]
    with pytest.raises(DataError) as err:
        encode_rows(tmp_path, family_tokenizers["phi-3.5"], rows)
    assert err.value.code == "InvalidDataset" and "rows.jsonl:1" in str(err.value)
    assert "does not render the tool calls" in str(err.value)
    assert json.dumps(rows[0])  # the row itself is valid: only this template cannot express it


def test_a_system_prompt_the_template_leaves_out_is_warned_about(family_tokenizers: dict[str, Any],
                                                                 tmp_path: Path) -> None:
    # Mistral v0.3 writes the system prompt into the last message only when that is a user turn: a
    # training row (which ends with an answer) loses it.
    rows = [{"messages": chat(("system", "Answer in one word."), ("user", f"Capital number {i}?"),
                              ("assistant", "Paris"))} for i in range(2)]
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    prepared = prepare_dataset(DatasetSpec.model_validate({"train": {"uri": str(path)}}),
                               family_tokenizers["mistral-v0.3"], seed=0)
    assert "Answer in one word." not in family_tokenizers["mistral-v0.3"].decode(prepared.train[0].input_ids)
    assert prepared.report.warnings == [
        f"the chat template leaves the system turn out of 2 rows (first: {path}:1): the model never sees it in "
        "training; check that the template renders what you mean it to"]


def test_a_turn_the_structure_cannot_locate_is_refused_when_its_text_is_ambiguous() -> None:
    # The template cuts earlier answers to one character (the marks cannot survive that) and its generation
    # prompt opens a think block the turns do not have: only the text is left, and it occurs twice.
    template = ("{%- for m in messages %}{{- '<|im_start|>' + m['role'] + '\\n' }}"
                "{%- if m['role'] == 'assistant' and not loop.last %}{{- m['content'][:1] }}"
                "{%- else %}{{- m['content'] }}{%- endif %}{{- '<|im_end|>\\n' }}{%- endfor %}"
                "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n<think>\\n' }}{%- endif %}")
    renderer = JinjaTemplate("inline", template, {"eos_token": "<|im_end|>"})
    quoted = Conversation((Message("user", "Say: blue sky"), Message("assistant", "blue sky"),
                           Message("user", "Again: blue sky"), Message("assistant", "blue sky")), "chat", 1)
    with pytest.raises(TemplateError) as err:
        renderer.render(quoted, "assistant")
    assert "occurs 3 times" in str(err.value) and "refusing to guess" in str(err.value)
