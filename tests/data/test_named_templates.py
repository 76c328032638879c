"""The Jinja forms of the named templates and of the plain join render exactly what training renders.

An exported tokenizer carries them (sftjob_trainer.serving), so a server renders a prompt as the job trained
on it. The oracle is transformers' own `apply_chat_template` on the Jinja source; the conversations are the
real SFT rows of the corpus (fixtures/corpus: messages, ShareGPT, Alpaca, tool calls, reasoning) and a few
written for the edge cases (whitespace that Llama 3 strips, a tool-call-only answer, a tool turn).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from corpus_helpers import CORPUS, SHAPES, read_rows
from data_helpers import write_jsonl

from sftjob_api.types import DatasetSpec
from sftjob_trainer.data import analyze, read_dataset
from sftjob_trainer.data.conversation import Conversation, Message
from sftjob_trainer.data.formats import convert_rows
from sftjob_trainer.data.named_templates import NAMED, PLAIN_JINJA, PlainTemplate, named_template, named_template_jinja
from sftjob_trainer.data.rendering import TemplateError

CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
WRITTEN = [
    Conversation((Message("user", "  Hi there \n"), Message("assistant", "\nHello! ")), "chat", 1),
    Conversation((Message("system", "Be brief."), Message("user", "Weather in Paris?"),
                  Message("assistant", "", tool_calls=(CALL,)), Message("tool", "sunny", tool_call_id="call_1"),
                  Message("assistant", "Sunny.")), "chat", 2, tools=(TOOL,)),
    Conversation((Message("user", "Weather?"), Message("assistant", "Let me look.", tool_calls=(CALL, CALL)),
                  Message("tool", "sunny"), Message("assistant", "Sunny.", reasoning="The tool said so.")),
                 "chat", 3, tools=(TOOL,)),
    Conversation((Message("user", "2+2="), Message("assistant", " 4")), "prompt_completion", 4),
]


def corpus_conversations() -> list[Conversation]:
    out: list[Conversation] = []
    for shape, file in SHAPES.items():
        rows = read_dataset(str(CORPUS / file)).rows
        _, conversations, problems = convert_rows(rows, "auto", {}, file)
        assert not problems and len(conversations) == len(read_rows(shape)), problems
        out.extend(conversations)
    return out


CONVERSATIONS = corpus_conversations() + WRITTEN


def served(tokenizer: Any, source: str, messages: list[Message], tools: Any, generation: bool) -> str:
    text = tokenizer.apply_chat_template([m.to_jinja() for m in messages], tools=[dict(t) for t in tools] or None,
                                         chat_template=source, add_generation_prompt=generation, tokenize=False)
    assert isinstance(text, str)
    return text


def prompt_turns(conversation: Conversation) -> list[Message]:
    last = max(i for i, m in enumerate(conversation.messages) if m.role == "assistant")
    return list(conversation.messages[:last])


@pytest.fixture(scope="module", params=["tiny", "llama-3.1", "mistral-v0.3", "no-bos-eos"])
def tokenizer(request: pytest.FixtureRequest, tiny_model_dir: Path, family_tokenizers: dict[str, Any]) -> Any:
    """Tokenizers whose BOS/EOS the templates write: the tiny one's, Llama 3's, Mistral's, and none at all."""
    from transformers import AutoTokenizer

    if request.param in family_tokenizers:
        return family_tokenizers[request.param]
    loaded = AutoTokenizer.from_pretrained(tiny_model_dir)
    if request.param == "no-bos-eos":
        loaded.bos_token = loaded.eos_token = None
    return loaded


def test_the_corpus_and_written_rows_cover_what_the_templates_branch_on() -> None:
    messages = [m for c in CONVERSATIONS for m in c.messages]
    assert len(CONVERSATIONS) >= 15
    assert {"system", "user", "assistant", "tool"} <= {m.role for m in messages}
    assert any(m.reasoning for m in messages) and any(m.tool_calls and not m.content for m in messages)
    assert any(c.tools for c in CONVERSATIONS) and any(m.content != m.content.strip() for m in messages)
    assert any(sum(m.role == "assistant" for m in c.messages) > 1 for c in CONVERSATIONS)


@pytest.mark.parametrize("name", NAMED)
def test_the_jinja_of_a_named_template_renders_what_training_renders(tokenizer: Any, name: str) -> None:
    renderer, source = named_template(name, tokenizer), named_template_jinja(name)
    for conversation in CONVERSATIONS:
        messages, tools = list(conversation.messages), conversation.tools
        for generation in (False, True):
            expected = renderer.render(conversation, "assistant", generation).text
            assert served(tokenizer, source, messages, tools, generation) == expected, (name, conversation.line)
        # What a server gets: the conversation before its last answer, with the generation prompt.
        rendered = renderer.render(conversation, "assistant")
        prompt = rendered.text[:rendered.prompt_end]
        assert served(tokenizer, source, prompt_turns(conversation), tools, True) == prompt, (name, conversation.line)


def test_the_jinja_of_the_plain_join_renders_what_training_renders(tokenizer: Any) -> None:
    renderer = PlainTemplate(tokenizer.eos_token or "")
    for conversation in CONVERSATIONS:
        for generation in (False, True):
            expected = renderer.render(conversation, "assistant", generation).text
            assert served(tokenizer, PLAIN_JINJA, list(conversation.messages), (), generation) == expected
        rendered = renderer.render(conversation, "assistant")
        assert served(tokenizer, PLAIN_JINJA, prompt_turns(conversation), (), True) == rendered.text[
            :rendered.prompt_end]
    prompt_completion = WRITTEN[-1]
    assert served(tokenizer, PLAIN_JINJA, prompt_turns(prompt_completion), (), True) == "2+2="


def test_the_named_templates_differ_where_their_layouts_do() -> None:
    sources = {name: named_template_jinja(name) for name in NAMED}
    assert "<|im_start|>" in sources["chatml"] and "<|eot_id|>" in sources["llama3"] and "'<|' + role" in \
        sources["zephyr"]
    assert "tools_block" in sources["chatml"] and "tools_block" not in sources["llama3"] + sources["zephyr"]
    assert "trim" in sources["llama3"] and "trim" not in sources["chatml"]
    with pytest.raises(TemplateError, match="unknown named chat template 'alpaca'"):
        named_template_jinja("alpaca")


@pytest.mark.parametrize("name", NAMED)
def test_training_again_on_an_exported_tokenizer_gives_the_same_tokens_and_labels(
        tmp_path: Path, family_tokenizers: dict[str, Any], name: str) -> None:
    # The exported template becomes the tokenizer's own: a job that continues from the export trains as before.
    import copy

    tokenizer = copy.deepcopy(family_tokenizers["llama-3.1"])
    rows = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Count to {n}"},
                          {"role": "assistant", "content": " ".join(str(i) for i in range(n))},
                          {"role": "user", "content": "Again"}, {"role": "assistant", "content": "0 1"}]}
            for n in range(2, 6)]
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    named = analyze(DatasetSpec.model_validate({"train": {"uri": str(path)}, "chatTemplate": name}), tokenizer,
                    read_dataset(str(path)))
    tokenizer.chat_template = named_template_jinja(name)
    own = analyze(DatasetSpec.model_validate({"train": {"uri": str(path)}}), tokenizer, read_dataset(str(path)))
    assert (named.chat_template, own.chat_template) == (name, "tokenizer")
    assert not named.report.errors and not own.report.errors
    assert [(e.input_ids, e.labels) for e in own.train] == [(e.input_ids, e.labels) for e in named.train]
    assert own.stop_token_ids == named.stop_token_ids
