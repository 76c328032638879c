"""Row layouts to conversations: reasoning traces, tool calls, per-message weights and the duplicate key."""

from __future__ import annotations

from typing import Any

import pytest

from sftjob_trainer.data.conversation import Message
from sftjob_trainer.data.formats import to_conversation
from sftjob_trainer.data.readers import Row
from sftjob_trainer.data.row_fields import RowError


def conv(data: dict[str, Any], schema: str = "messages") -> Any:
    return to_conversation(Row(1, data), schema)


def user(content: str = "q") -> dict[str, Any]:
    return {"role": "user", "content": content}


@pytest.mark.parametrize("key", ["reasoning_content", "reasoning", "thinking"])
def test_reasoning_is_read_from_each_common_field(key: str) -> None:
    c = conv({"messages": [user(), {"role": "assistant", "content": "4", key: "2 and 2 make 4."}]})
    assert c.messages[1] == Message("assistant", "4", reasoning="2 and 2 make 4.")


def test_a_leading_think_block_is_the_turn_reasoning() -> None:
    c = conv({"messages": [user(), {"role": "assistant", "content": "<think>\n2 and 2 make 4.\n</think>\n\n4"}]})
    assert (c.messages[1].reasoning, c.messages[1].content) == ("2 and 2 make 4.", "4")
    sharegpt = conv({"conversations": [{"from": "human", "value": "q"},
                                       {"from": "gpt", "value": "<think>\nhm\n</think>\n\nyes"}]}, "sharegpt")
    assert (sharegpt.messages[1].reasoning, sharegpt.messages[1].content) == ("hm", "yes")
    # Only a leading block is reasoning; <think> in the middle of an answer is text.
    middle = conv({"messages": [user(), {"role": "assistant", "content": "Use <think>x</think> tags."}]})
    assert middle.messages[1].content == "Use <think>x</think> tags." and not middle.messages[1].reasoning


def test_typed_content_parts_carry_text_reasoning_and_tool_calls() -> None:
    # LLaMA-Factory's reasoning data: {type, value} parts.
    c = conv({"messages": [user(), {"role": "assistant", "content": [
        {"type": "reasoning", "value": "I need the weather."},
        {"type": "tool_call", "value": '{"name": "weather", "arguments": {"city": "Oslo"}}'}]}]})
    message = c.messages[1]
    assert message.reasoning == "I need the weather." and message.content == ""
    assert message.tool_calls == ({"type": "function", "function": {"name": "weather", "arguments": {"city": "Oslo"}}},)
    openai = conv({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text",
                                                                                           "text": "b"}]},
                                {"role": "assistant", "content": "c"}]})
    assert openai.messages[0].content == "ab"
    with pytest.raises(RowError) as err:
        conv({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]})
    assert err.value.field == "messages[0].content[0]"


def test_tool_calls_take_the_openai_form_with_parsed_arguments() -> None:
    c = conv({"messages": [user(), {"role": "assistant", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}},
        {"name": "g", "arguments": "not json"}]}], "tools": [{"name": "f", "parameters": {}}]})
    assert c.messages[1].tool_calls == (
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": {"x": 1}}},
        {"type": "function", "function": {"name": "g", "arguments": "not json"}})
    assert c.tools == ({"type": "function", "function": {"name": "f", "parameters": {}}},)  # bare schema wrapped
    assert c.messages[1].to_jinja()["content"] is None  # a turn that only calls tools, as OpenAI writes it


def test_sharegpt_function_call_and_observation_turns_are_tool_calls_and_results() -> None:
    c = conv({"conversations": [
        {"from": "human", "value": "area of a 5x3 rectangle?"},
        {"from": "function_call", "value": '{"name": "area", "arguments": {"dims": [5, 3]}}'},
        {"from": "observation", "value": '{"area": 15}'},
        {"from": "gpt", "value": "15."}], "tools": '[{"name": "area", "parameters": {}}]'}, "sharegpt")
    assert [m.role for m in c.messages] == ["user", "assistant", "tool", "assistant"]
    assert c.messages[1].tool_calls == ({"type": "function", "function": {"name": "area",
                                                                         "arguments": {"dims": [5, 3]}}},)
    assert c.messages[1].content == "" and c.messages[2].content == '{"area": 15}'
    with pytest.raises(RowError) as err:
        conv({"conversations": [{"from": "human", "value": "q"}, {"from": "function_call", "value": "area(5, 3)"}]},
             "sharegpt")
    assert err.value.field == "conversations[1].value" and "JSON" in err.value.message


def test_weights_are_zero_or_one_on_assistant_messages() -> None:
    c = conv({"messages": [user(), {"role": "assistant", "content": "a", "weight": 0}, user(),
                           {"role": "assistant", "content": "b", "weight": 1}]})
    assert [m.weight for m in c.messages] == [1, 0, 1, 1]
    for bad, field, message in [({"role": "assistant", "content": "a", "weight": 0.5}, "messages[1].weight", "0.5"),
                                ({"role": "assistant", "content": "a", "weight": True}, "messages[1].weight", "True")]:
        with pytest.raises(RowError) as err:
            conv({"messages": [user(), bad]})
        assert err.value.field == field and message in err.value.message
    with pytest.raises(RowError) as err:
        conv({"messages": [{"role": "user", "content": "q", "weight": 0}, {"role": "assistant", "content": "a"}]})
    assert err.value.field == "messages[0].weight" and "assistant messages only" in err.value.message


def test_the_duplicate_key_counts_tools_reasoning_and_weights() -> None:
    base = {"messages": [user(), {"role": "assistant", "content": "a"}]}
    key = conv(base).key()
    assert conv({**base, "tools": [{"name": "f"}]}).key() != key
    assert conv({**base, "tools": [{"name": "f"}]}).key() != conv({**base, "tools": [{"name": "g"}]}).key()
    assert conv({"messages": [user(), {"role": "assistant", "content": "a", "reasoning": "r"}]}).key() != key
    assert conv({"messages": [user(), {"role": "assistant", "content": "a", "weight": 0}]}).key() != key
    assert conv({"messages": [user("Q "), {"role": "assistant", "content": "A"}]}).key() == key  # normalised
    assert conv({"messages": [user(), {"role": "assistant", "content": "a", "reasoning": "r"}]}) \
        .without_reasoning().key() == key
