"""The fields of one row: message lists, ShareGPT turns, content parts, tool calls, reasoning and loss weights.

Each reader takes the decoded row (or one of its values) and either returns the field in the conversation form
(`conversation.Message`) or raises `RowError` naming the field path (`messages[2].content`) and what is wrong.
JSON-string values (CSV cells, some exports) are parsed where a list or an object is expected.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from sftjob_trainer.data.conversation import REASONING_FIELDS, THINK_CLOSE, THINK_OPEN, Message

_JSON_START = re.compile(r"\s*[\[{]")
ROLES = ("system", "user", "assistant", "tool")
# ShareGPT/Vicuna speaker names seen in the wild, mapped to OpenAI roles.
SHAREGPT_ROLES = {
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "model": "assistant", "chatgpt": "assistant",
    "function_call": "assistant",
    "system": "system",
    "tool": "tool", "observation": "tool", "function_response": "tool",
}


class RowError(Exception):
    """A row that does not fit its schema."""

    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def maybe_json(value: Any) -> Any:
    """`value` decoded when it is a string holding a JSON list or object, else `value` as given.

    CSV cells (and some exports) carry nested lists as JSON strings.
    """
    if isinstance(value, str) and _JSON_START.match(value):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _type_name(value: Any) -> str:
    names = {list: "an array", dict: "an object", str: "a string", int: "a number", float: "a number",
             bool: "a boolean"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def text_field(data: Mapping[str, Any], field: str, optional: bool = False) -> str:
    """The string `data[field]` ("" for a missing or null optional field).

    Raises:
        RowError: When the field is missing (and required) or not a string.
    """
    if field not in data or (optional and data[field] is None):
        if optional:
            return ""
        raise RowError(field, "required field is missing")
    value = data[field]
    if isinstance(value, str):
        return value
    raise RowError(field, f"expected a string, got {_type_name(value)}")


def message_list(data: Mapping[str, Any], field: str) -> list[Any]:
    """The non-empty list of turns in `data[field]` (a JSON string is decoded).

    Raises:
        RowError: When the field is missing, not a list, or empty.
    """
    if field not in data:
        raise RowError(field, "required field is missing")
    value = maybe_json(data[field])
    if not isinstance(value, list):
        raise RowError(field, f"expected an array of messages, got {_type_name(value)}")
    if not value:
        raise RowError(field, "the conversation is empty")
    return value


def tool_definitions(data: Mapping[str, Any]) -> tuple[Mapping[str, Any], ...]:
    """The tool definitions of a row, each in the OpenAI form `{type: function, function: {name, ...}}`.

    A bare function schema (`{name, description, parameters}`, as glaive and LLaMA-Factory write them)
    is wrapped: templates that read `tool.function` (Mistral) need the wrapper, the others print it.
    """
    value = maybe_json(data.get("tools"))
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise RowError("tools", f"expected an array of tool definitions (objects), got {_type_name(value)}")
    return tuple(t if "function" in t or "name" not in t else {"type": "function", "function": t} for t in value)


def _tool_call(value: Any, field: str) -> dict[str, Any]:
    """One tool call in the OpenAI form, with JSON-string arguments parsed into an object."""
    if not isinstance(value, dict):
        raise RowError(field, f"expected a tool call object, got {_type_name(value)}")
    function = value.get("function", value)
    if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
        raise RowError(f"{field}.function.name" if "function" in value else f"{field}.name",
                       "a tool call needs the name of the function it calls")
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):
        parsed = maybe_json(arguments)
        arguments = parsed if isinstance(parsed, dict) else arguments  # not an object: kept as written
    out = {k: v for k, v in value.items() if k not in ("function", "name", "arguments")}
    out["type"] = value.get("type", "function")
    out["function"] = {**{k: v for k, v in function.items() if k != "arguments"}, "arguments": arguments}
    return out


def _split_think(content: str) -> tuple[str, str]:
    """(reasoning, answer) of a content that starts with a `<think>…</think>` block; else ("", content)."""
    body = content.lstrip()
    if not body.startswith(THINK_OPEN) or THINK_CLOSE not in body:
        return "", content
    thought, _, answer = body[len(THINK_OPEN):].partition(THINK_CLOSE)
    return thought.strip("\n"), answer.lstrip("\n")


def _weight(item: Mapping[str, Any], role: str, field: str) -> int:
    if "weight" not in item or item["weight"] is None:
        return 1
    value = item["weight"]
    if role != "assistant":
        raise RowError(field, "a loss weight applies to assistant messages only")
    if isinstance(value, bool) or value not in (0, 1):
        raise RowError(field, f"expected 0 (no loss) or 1, got {value!r}")
    return int(value)


def _reasoning_field(item: Mapping[str, Any], where: str) -> str:
    for key in REASONING_FIELDS:
        value = item.get(key)
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise RowError(f"{where}.{key}", f"expected a string, got {_type_name(value)}")
        return value
    return ""


def _content(value: Any, field: str) -> tuple[str, str, list[dict[str, Any]]]:
    """(text, reasoning, tool calls) of a message's `content`: a string, or typed parts.

    Parts are `{type: text, text|value}` (OpenAI; LLaMA-Factory writes `value`), `{type: reasoning|thinking,
    value|text}` and `{type: tool_call, value}` (a JSON call object, as LLaMA-Factory's reasoning data has).
    """
    if isinstance(value, str):
        return value, "", []
    if value is None:
        return "", "", []
    if not isinstance(value, list):
        raise RowError(field, f"expected a string, got {_type_name(value)}")
    texts: list[str] = []
    thoughts: list[str] = []
    calls: list[dict[str, Any]] = []
    for i, part in enumerate(value):
        kind = part.get("type") if isinstance(part, dict) else None
        body = part.get("text", part.get("value")) if isinstance(part, dict) else None
        if kind == "tool_call":
            calls.append(_tool_call(maybe_json(body), f"{field}[{i}].value"))
            continue
        if kind not in ("text", "reasoning", "thinking") or not isinstance(body, str):
            raise RowError(f"{field}[{i}]", "only text content parts ({type: text, text: ...}) are supported, and "
                           "reasoning ({type: reasoning, value: ...}) and tool-call ({type: tool_call, value: {name, "
                           "arguments}}) parts; this part is " + _part_name(part))
        (texts if kind == "text" else thoughts).append(body)
    return "".join(texts), "\n".join(thoughts), calls


def _part_name(part: Any) -> str:
    if not isinstance(part, dict):
        return _type_name(part)
    kind = part.get("type")
    return f"of type {kind!r}" if isinstance(kind, str) else "an object without a string `type`"


def _read_turns(items: list[Any], field: str, role_key: str, shape: str,
                role_of: Callable[[Any, str], str], read: Callable[[dict[str, Any], str, str], Message],
                ) -> tuple[Message, ...]:
    """Each turn object of a list as a Message: the checks every layout shares, then the layout's own reading.

    Args:
        items: The turns of the row.
        field: The row's field that holds them (`messages`, `conversations`), for error paths.
        role_key: The key of a turn that names its speaker (`role`, `from`).
        shape: The turn object's keys as an error shows them (`{role, content}`).
        role_of: The role of a speaker value (its field path given, to raise on an unknown one).
        read: The Message of one turn object, given its role and its field path.

    Raises:
        RowError: Naming the first turn that is not an object, has no speaker, or does not fit its layout.
    """
    out = []
    for i, item in enumerate(items):
        where = f"{field}[{i}]"
        if not isinstance(item, dict):
            raise RowError(where, f"expected a {shape}, got {_type_name(item)}")
        if role_key not in item:
            raise RowError(f"{where}.{role_key}", "required field is missing")
        out.append(read(item, role_of(item[role_key], f"{where}.{role_key}"), where))
    return tuple(out)


def read_messages(items: list[Any], field: str) -> tuple[Message, ...]:
    """The OpenAI-style messages (`{role, content, ...}`) of `field` (`messages`, or a side of prompt/completion).

    Raises:
        RowError: Naming the first message that does not fit.
    """
    return _read_turns(items, field, "role", "message object ({role, content})", _openai_role, _openai_message)


def _openai_role(role: Any, where: str) -> str:
    if role not in ROLES:
        raise RowError(where, f"unknown role {role!r}; one of: {', '.join(ROLES)}")
    return str(role)


def _openai_message(item: dict[str, Any], role: str, where: str) -> Message:
    raw_calls = maybe_json(item.get("tool_calls")) or []
    if not isinstance(raw_calls, list):
        raise RowError(f"{where}.tool_calls", "expected an array of tool call objects")
    calls = [_tool_call(c, f"{where}.tool_calls[{j}]") for j, c in enumerate(raw_calls)]
    text, thought, part_calls = _content(item.get("content"), f"{where}.content")
    calls += part_calls
    if "content" not in item and not calls:
        raise RowError(f"{where}.content", "required field is missing")
    if calls and role != "assistant":
        raise RowError(f"{where}.tool_calls", "only assistant messages call tools")
    reasoning = "\n".join(r for r in (_reasoning_field(item, where), thought) if r)
    if role == "assistant" and not reasoning:
        reasoning, text = _split_think(text)
    elif reasoning and role != "assistant":
        raise RowError(where, "only assistant messages carry reasoning")
    name = item.get("name")
    call_id = item.get("tool_call_id")
    return Message(role, text, tuple(calls), name if isinstance(name, str) else None,
                   call_id if isinstance(call_id, str) else None, reasoning, _weight(item, role, f"{where}.weight"))


def read_sharegpt(items: list[Any]) -> tuple[Message, ...]:
    """The ShareGPT turns (`{from, value}`) of `conversations`, speakers mapped to OpenAI roles.

    Raises:
        RowError: Naming the first turn that does not fit.
    """
    return _read_turns(items, "conversations", "from", "turn object ({from, value})", _sharegpt_role,
                       _sharegpt_message)


def _sharegpt_role(speaker: Any, where: str) -> str:
    role = SHAREGPT_ROLES.get(speaker) if isinstance(speaker, str) else None
    if role is None:
        raise RowError(where, f"unknown speaker {speaker!r}; one of: human, gpt, system, tool")
    return role


def _sharegpt_message(item: dict[str, Any], role: str, where: str) -> Message:
    if "value" not in item:
        raise RowError(f"{where}.value", "required field is missing")
    if not isinstance(item["value"], str):
        raise RowError(f"{where}.value", f"expected a string, got {_type_name(item['value'])}")
    if item["from"] == "function_call":
        return Message("assistant", "", _function_calls(item["value"], f"{where}.value"))
    if role == "assistant":
        reasoning, text = _split_think(item["value"])
        return Message(role, text, reasoning=reasoning)
    return Message(role, item["value"])


def _function_calls(value: str, field: str) -> tuple[dict[str, Any], ...]:
    """The calls of a ShareGPT `function_call` turn: a JSON `{name, arguments}` object or a list of them."""
    parsed = maybe_json(value)
    items = parsed if isinstance(parsed, list) else [parsed]
    if isinstance(parsed, str) or not items:
        raise RowError(field, 'a function_call turn holds a JSON object {"name": ..., "arguments": {...}} '
                       "(or a list of them); this one is not JSON")
    return tuple(_tool_call(call, field) for call in items)

