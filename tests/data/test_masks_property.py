"""Property tests: loss masks over random conversations, checked against spans computed here from the
template's known layout (not from the pipeline's own span logic), with the real BPE tokenizer.

For each token, the tokenizer's offsets say which characters it covers. Then:
- every trained token lies inside an assistant response or its end-of-turn marker;
- every token that lies wholly inside a trained turn (response + `<|im_end|>`) is trained;
- the `<|im_end|>` (EOS) token closing each trained turn is trained;
- `trainOn` selects the turns: every assistant turn, only the last, or all tokens.
"""

from __future__ import annotations

from typing import Any

import pytest
from data_helpers import DEFAULT_SYSTEM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sftjob_trainer.data import IGNORE_INDEX, encode_conversations
from sftjob_trainer.data.conversation import Conversation, Message

# Text without the chat special tokens' "<|" (content that spells a special token is a different test).
_ALPHABET = st.characters(codec="utf-8", exclude_characters="<\x00")
_CONTENT = st.text(alphabet=_ALPHABET, min_size=1, max_size=40).filter(lambda s: s.strip() != "")


@st.composite
def conversations(draw: st.DrawFn) -> Conversation:
    """system? then 1-4 (user, assistant) exchanges, optionally ending with a user turn."""
    messages = []
    if draw(st.booleans()):
        messages.append(Message("system", draw(_CONTENT)))
    for _ in range(draw(st.integers(1, 4))):
        messages += [Message("user", draw(_CONTENT)), Message("assistant", draw(_CONTENT))]
    if draw(st.booleans()):
        messages.append(Message("user", draw(_CONTENT)))
    return Conversation(tuple(messages), "chat", 1)


def expected_layout(conv: Conversation, default_system: str | None) -> tuple[str, list[tuple[int, int]]]:
    """The ChatML text and the [start, end) span of each assistant turn's response + <|im_end|>."""
    messages = list(conv.messages)
    if default_system is not None and messages[0].role != "system":
        messages.insert(0, Message("system", default_system))
    text, spans = "", []
    for m in messages:
        text += f"<|im_start|>{m.role}\n"
        if m.role == "assistant":
            spans.append((len(text), len(text) + len(m.content) + len("<|im_end|>")))
        text += f"{m.content}<|im_end|>\n"
    return text, spans


def check(tokenizer: Any, conv: Conversation, train_on: str, default_system: str | None) -> None:
    example = encode_conversations([conv], tokenizer, train_on=train_on)[0]  # type: ignore[arg-type]
    text, spans = expected_layout(conv, default_system)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    assert example.input_ids == encoded["input_ids"], "the rendered text differs from the template's layout"
    selected = {"assistant": spans, "last_assistant": spans[-1:], "all": [(0, len(text))]}[train_on]
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for (start, end), token, label in zip(encoded["offset_mapping"], example.input_ids, example.labels,
                                          strict=True):
        inside_selected = any(s <= start and end <= e for s, e in selected)
        starts_in_selected = any(s <= start < e for s, e in selected)
        if label != IGNORE_INDEX:
            assert label == token
            assert starts_in_selected, f"trained token {text[start:end]!r} at {start} is outside the trained turns"
            assert train_on == "all" or any(s <= start < e for s, e in spans), "trained token outside any turn"
        if inside_selected:
            assert label == token, f"token {text[start:end]!r} at {start} inside a trained turn is not trained"
    for _, e in spans if train_on != "last_assistant" else spans[-1:]:
        closing = [i for i, (start, end) in enumerate(encoded["offset_mapping"]) if end == e]
        assert closing and example.input_ids[closing[-1]] == im_end
        assert example.labels[closing[-1]] == im_end, "the end-of-turn/EOS token after a trained turn is not trained"
    assert example.reference == conv.messages[conv.assistant_indexes[-1]].content
    prompt = tokenizer.decode(example.prompt_ids)
    assert prompt.endswith("<|im_start|>assistant\n")
    assert text.startswith(prompt)


_SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.mark.parametrize("train_on", ["assistant", "last_assistant", "all"])
@_SETTINGS
@given(conv=conversations())
def test_chatml_fallback_masks(tiny_tokenizer: Any, train_on: str, conv: Conversation) -> None:
    assert tiny_tokenizer.chat_template is None  # the ChatML fallback is what is under test
    check(tiny_tokenizer, conv, train_on, default_system=None)


@pytest.mark.parametrize("train_on", ["assistant", "last_assistant", "all"])
@_SETTINGS
@given(conv=conversations())
def test_tokenizer_template_with_a_system_prompt(system_tokenizer: Any, train_on: str, conv: Conversation) -> None:
    check(system_tokenizer, conv, train_on, default_system=DEFAULT_SYSTEM)


def test_template_without_prefix_consistency_still_masks_the_responses(tiny_tokenizer: Any) -> None:
    # Earlier assistant turns are rendered shortened (as reasoning templates drop their thoughts), so a prefix
    # render is not a prefix of the full text: the responses are found in the text instead.
    template = ("{%- for m in messages %}{{- '<|im_start|>' + m['role'] + '\\n' }}"
                "{%- if m['role'] == 'assistant' and not loop.last %}{{- m['content'][:1] }}"
                "{%- else %}{{- m['content'] }}{%- endif %}{{- '<|im_end|>\\n' }}{%- endfor %}"
                "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")
    conv = Conversation((Message("user", "one"), Message("assistant", "Xtwo"), Message("user", "three"),
                         Message("assistant", "four")), "chat", 1)
    example = encode_conversations([conv], tiny_tokenizer, chat_template=template)[0]
    trained = tiny_tokenizer.decode([t for t, label in zip(example.input_ids, example.labels, strict=True)
                                     if label != IGNORE_INDEX])
    assert trained == "X<|im_end|>four<|im_end|>"
