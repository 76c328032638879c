"""Row layouts (schemas), detected from the columns, and their mapping to one conversation form.

Pure functions: rows in, `Conversation`s and `Problem`s out. Every format becomes a list of
messages with roles system/user/assistant/tool; prompt/completion keeps a flag so it can be
joined plainly when no chat template applies, and plain `text` is trained on every token.

Besides its text an assistant message carries its reasoning (from `reasoning_content`, `reasoning`,
`thinking`, typed `reasoning` content parts, or a leading `<think>…</think>` block), its tool calls
in the OpenAI form (from `tool_calls`, typed `tool_call` parts, or ShareGPT `function_call` turns;
JSON-string arguments are parsed into objects, as chat templates expect) and its loss weight (OpenAI's
`weight: 0|1`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from sftjob_trainer.data.errors import Problem
from sftjob_trainer.data.readers import Row

_JSON_START = re.compile(r"\s*[\[{]")
SCHEMAS = ("prompt_completion", "messages", "alpaca", "sharegpt", "text")
ROLES = ("system", "user", "assistant", "tool")
Kind = Literal["chat", "prompt_completion", "text"]

# ShareGPT/Vicuna speaker names seen in the wild, mapped to OpenAI roles.
SHAREGPT_ROLES = {
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "model": "assistant", "chatgpt": "assistant",
    "function_call": "assistant",
    "system": "system",
    "tool": "tool", "observation": "tool", "function_response": "tool",
}
# Message fields that hold an assistant turn's reasoning, in the order they are read.
REASONING_FIELDS = ("reasoning_content", "reasoning", "thinking")
# The block a reasoning model writes before its answer (DeepSeek-R1, Qwen3, their distillations).
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
# What each schema requires, in detection order (the first match wins).
REQUIRED = {
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "alpaca": ("instruction", "output"),
    "prompt_completion": ("prompt", "completion"),
    "text": ("text",),
}


@dataclass(frozen=True)
class Message:
    """One turn of a conversation."""

    role: str
    """system, user, assistant or tool."""
    content: str
    """The text of the turn."""
    tool_calls: tuple[Mapping[str, Any], ...] = ()
    """OpenAI-style tool calls of an assistant turn."""
    name: str | None = None
    """Tool name of a tool turn (OpenAI `name`/`tool_call_id` are kept as given)."""
    tool_call_id: str | None = None
    """Which call a tool turn answers."""
    reasoning: str = ""
    """The reasoning (thinking) of an assistant turn, written before its answer."""
    weight: int = 1
    """Loss weight of an assistant turn: 0 keeps it as context without loss (OpenAI's `weight`)."""

    def to_jinja(self) -> dict[str, Any]:
        """The message as chat templates expect it.

        `role` and `content` (None for a turn that only calls tools, as OpenAI writes it), `tool_calls`,
        `name`, `tool_call_id`, and the reasoning under each name templates read it by
        (`reasoning_content`, `reasoning`, `thinking`).
        """
        content: str | None = None if self.tool_calls and not self.content else self.content
        out: dict[str, Any] = {"role": self.role, "content": content}
        if self.tool_calls:
            out["tool_calls"] = [_plain(call) for call in self.tool_calls]
        if self.name is not None:
            out["name"] = self.name
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        if self.reasoning:
            out.update(dict.fromkeys(REASONING_FIELDS, self.reasoning))
        return out


def _plain(value: Any) -> Any:
    # Copies of the row's nested objects, so a template can never change the conversation it renders.
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True)
class Conversation:
    """The internal form every row format maps to."""

    messages: tuple[Message, ...]
    """The turns; for `text` a single turn whose role is `text`."""
    kind: Kind
    """chat, prompt_completion (string prompt and completion) or text (loss on every token)."""
    line: int
    """Line of the source row."""
    tools: tuple[Mapping[str, Any], ...] = ()
    """Tool (function) definitions offered in this conversation, passed to the chat template."""
    source: int = 0
    """Index of the training source (`dataset.train.sources`) the row came from; 0 for a single source."""

    def key(self) -> str:
        """Normalised text for exact de-duplication: whitespace collapsed and case folded.

        Everything that changes what is trained counts: roles, texts, reasoning, tool calls, weights and
        the tool definitions offered.
        """
        parts = [json.dumps(_plain(self.tools), sort_keys=True) if self.tools else ""]
        for m in self.messages:
            calls = json.dumps(_plain(m.tool_calls), sort_keys=True) if m.tool_calls else ""
            parts.append(f"{m.role}\x1f{_normal(m.content)}\x1f{_normal(m.reasoning)}\x1f{calls}\x1f{m.weight}")
        return "\x1e".join(parts)

    def without_reasoning(self) -> Conversation:
        """The conversation with every turn's reasoning removed (`dataset.reasoning: drop`)."""
        if not any(m.reasoning for m in self.messages):
            return self
        return replace(self, messages=tuple(replace(m, reasoning="") for m in self.messages))

    @property
    def assistant_indexes(self) -> list[int]:
        """Positions of the assistant turns."""
        return [i for i, m in enumerate(self.messages) if m.role == "assistant"]


def _normal(text: str) -> str:
    return " ".join(text.split()).casefold()


class RowError(Exception):
    """A row that does not fit its schema."""

    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def apply_column_map(row: Mapping[str, Any], column_map: Mapping[str, str]) -> dict[str, Any]:
    """Rename columns `{fileColumn: expectedColumn}`; columns not in the map keep their name."""
    if not column_map:
        return dict(row)
    return {column_map.get(k, k): v for k, v in row.items()}


def detect_schema(row: Mapping[str, Any]) -> str | None:
    """The schema whose required columns `row` has, or None."""
    keys = set(row)
    for schema, required in REQUIRED.items():
        if set(required) <= keys:
            return schema
    if {"prompt", "response"} <= keys:
        return "prompt_completion"
    return None


def describe_columns(row: Mapping[str, Any]) -> str:
    """A hint naming the columns found and the layouts understood."""
    found = ", ".join(sorted(row)) or "none"
    return (f"cannot detect the dataset format from the columns ({found}); expected messages, conversations, "
            "instruction+output, prompt+completion (or prompt+response), or text; set dataset.schema "
            "(--schema) or rename columns with dataset.columnMap")


def to_conversation(row: Row, schema: str) -> Conversation:
    """Map one row of `schema` to a Conversation.

    Raises:
        RowError: Naming the field that is missing or of the wrong type.
    """
    data = row.data
    if schema == "messages":
        chat_turns = _messages(_list(data, "messages"), "messages")
        check_turns(chat_turns, _fields("messages", len(chat_turns)), "role")
        return Conversation(chat_turns, "chat", row.line, _tools(data))
    if schema == "sharegpt":
        turns = _sharegpt(_list(data, "conversations"))
        check_turns(turns, _fields("conversations", len(turns)), "from")
        return Conversation(turns, "chat", row.line, _tools(data))
    if schema == "alpaca":
        instruction = _text(data, "instruction")
        extra = _text(data, "input", optional=True)
        prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        messages = [Message("user", prompt), Message("assistant", _text(data, "output"))]
        if "system" in data and data["system"] not in (None, ""):
            messages.insert(0, Message("system", _text(data, "system")))
        return Conversation(tuple(messages), "chat", row.line)
    if schema == "prompt_completion":
        completion_key = "completion" if "completion" in data or "response" not in data else "response"
        if isinstance(_maybe_json(data.get("prompt")), list) and isinstance(_maybe_json(data.get(completion_key)),
                                                                            list):
            # TRL's conversational prompt/completion: both sides are message lists.
            prompt_turns = _messages(_list(data, "prompt"), "prompt")
            completion_turns = _messages(_list(data, completion_key), completion_key)
            check_turns(prompt_turns + completion_turns,
                        _fields("prompt", len(prompt_turns)) + _fields(completion_key, len(completion_turns)), "role")
            return Conversation(prompt_turns + completion_turns, "chat", row.line, _tools(data))
        return Conversation((Message("user", _text(data, "prompt")),
                             Message("assistant", _text(data, completion_key))), "prompt_completion", row.line)
    if schema == "text":
        return Conversation((Message("text", _text(data, "text")),), "text", row.line)
    raise RowError(None, f"unknown schema '{schema}'; one of: {', '.join(SCHEMAS)}")


def _fields(name: str, count: int) -> list[str]:
    return [f"{name}[{i}]" for i in range(count)]


def check_turns(messages: tuple[Message, ...], fields: list[str], role_key: str) -> None:
    """Check the order of the turns of one conversation.

    A conversation is optional system turns, then a user turn, then any turns; a tool turn must
    follow the assistant turn whose tool call it answers (matched by `tool_call_id`, else by `name`,
    where the calls carry them); and a conversation with an assistant turn ends with one.
    Conversations without any assistant turn are left to the quality filter (`no_assistant_turn`).

    Args:
        messages: The turns.
        fields: The field path of each turn in the row, e.g. `messages[2]`.
        role_key: The key that holds the role in the row (`role`, or `from` for ShareGPT).

    Raises:
        RowError: Naming the first turn out of place, or the whole conversation when it ends without an answer.
    """
    seen_user = False
    call_ids: set[str] = set()
    call_names: set[str] = set()
    previous = ""  # role of the nearest earlier turn that is not a tool result
    for message, field in zip(messages, fields, strict=True):
        role = message.role
        if role == "system":
            if seen_user:  # every earlier non-system turn was checked: the first of them was a user turn
                raise RowError(f"{field}.{role_key}", "a system turn after the conversation has started is out of "
                               "order: system turns come first; merge it into the opening system turn")
            continue
        if not seen_user and role != "user":
            raise RowError(f"{field}.{role_key}", f"{'an' if role == 'assistant' else 'a'} {role} turn before any "
                           "user turn is out of order: after optional system turns a conversation starts with a "
                           "user turn; add the user turn it answers or drop it")
        seen_user = True
        if role == "tool":
            _check_tool_turn(message, field, previous, call_ids, call_names)
            continue
        if role == "assistant":
            for call in message.tool_calls:
                if isinstance(call.get("id"), str):
                    call_ids.add(call["id"])
                function = call.get("function", call)
                if isinstance(function, Mapping) and isinstance(function.get("name"), str):
                    call_names.add(function["name"])
        previous = role
    if any(m.role == "assistant" for m in messages) and messages[-1].role in ("user", "tool"):
        whole = fields[-1].rsplit("[", 1)[0]
        raise RowError(whole, f"the conversation ends with a {messages[-1].role} turn: there is no answer to learn "
                       "for it; end each conversation with the assistant's reply or remove the trailing turn")


def _check_tool_turn(message: Message, field: str, previous: str, call_ids: set[str], call_names: set[str]) -> None:
    if previous != "assistant":
        raise RowError(field, f"a tool result must answer a tool call of an earlier assistant turn, but this tool "
                       f"turn follows a {previous} turn; put the assistant turn that calls the tool before it")
    if message.tool_call_id is not None and call_ids and message.tool_call_id not in call_ids:
        raise RowError(field, f"tool_call_id {message.tool_call_id!r} answers no tool call of an earlier assistant "
                       f"turn (their ids: {', '.join(sorted(call_ids))})")
    if message.tool_call_id is None and message.name is not None and call_names and message.name not in call_names:
        raise RowError(field, f"the tool result of {message.name!r} answers no tool call of an earlier assistant "
                       f"turn (they call: {', '.join(sorted(call_names))})")


def _maybe_json(value: Any) -> Any:
    # CSV cells (and some exports) carry nested lists as JSON strings.
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


def _text(data: Mapping[str, Any], field: str, optional: bool = False) -> str:
    if field not in data or (optional and data[field] is None):
        if optional:
            return ""
        raise RowError(field, "required field is missing")
    value = data[field]
    if isinstance(value, str):
        return value
    raise RowError(field, f"expected a string, got {_type_name(value)}")


def _list(data: Mapping[str, Any], field: str) -> list[Any]:
    if field not in data:
        raise RowError(field, "required field is missing")
    value = _maybe_json(data[field])
    if not isinstance(value, list):
        raise RowError(field, f"expected an array of messages, got {_type_name(value)}")
    if not value:
        raise RowError(field, "the conversation is empty")
    return value


def _tools(data: Mapping[str, Any]) -> tuple[Mapping[str, Any], ...]:
    """The tool definitions of a row, each in the OpenAI form `{type: function, function: {name, ...}}`.

    A bare function schema (`{name, description, parameters}`, as glaive and LLaMA-Factory write them)
    is wrapped: templates that read `tool.function` (Mistral) need the wrapper, the others print it.
    """
    value = _maybe_json(data.get("tools"))
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
        parsed = _maybe_json(arguments)
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
            calls.append(_tool_call(_maybe_json(body), f"{field}[{i}].value"))
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


def _messages(items: list[Any], field: str) -> tuple[Message, ...]:
    out = []
    for i, item in enumerate(items):
        where = f"{field}[{i}]"
        if not isinstance(item, dict):
            raise RowError(where, f"expected a message object ({{role, content}}), got {_type_name(item)}")
        if "role" not in item:
            raise RowError(f"{where}.role", "required field is missing")
        role = item["role"]
        if role not in ROLES:
            raise RowError(f"{where}.role", f"unknown role {role!r}; one of: {', '.join(ROLES)}")
        raw_calls = _maybe_json(item.get("tool_calls")) or []
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
        out.append(Message(role, text, tuple(calls), name if isinstance(name, str) else None,
                           call_id if isinstance(call_id, str) else None, reasoning,
                           _weight(item, role, f"{where}.weight")))
    return tuple(out)


def _sharegpt(items: list[Any]) -> tuple[Message, ...]:
    out = []
    for i, item in enumerate(items):
        where = f"conversations[{i}]"
        if not isinstance(item, dict):
            raise RowError(where, f"expected a turn object ({{from, value}}), got {_type_name(item)}")
        if "from" not in item:
            raise RowError(f"{where}.from", "required field is missing")
        speaker = item["from"]
        role = SHAREGPT_ROLES.get(speaker) if isinstance(speaker, str) else None
        if role is None:
            raise RowError(f"{where}.from", f"unknown speaker {speaker!r}; one of: human, gpt, system, tool")
        if "value" not in item:
            raise RowError(f"{where}.value", "required field is missing")
        if not isinstance(item["value"], str):
            raise RowError(f"{where}.value", f"expected a string, got {_type_name(item['value'])}")
        if speaker == "function_call":
            out.append(Message("assistant", "", _function_calls(item["value"], f"{where}.value")))
        elif role == "assistant":
            reasoning, text = _split_think(item["value"])
            out.append(Message(role, text, reasoning=reasoning))
        else:
            out.append(Message(role, item["value"]))
    return tuple(out)


def _function_calls(value: str, field: str) -> tuple[dict[str, Any], ...]:
    """The calls of a ShareGPT `function_call` turn: a JSON `{name, arguments}` object or a list of them."""
    parsed = _maybe_json(value)
    items = parsed if isinstance(parsed, list) else [parsed]
    if isinstance(parsed, str) or not items:
        raise RowError(field, 'a function_call turn holds a JSON object {"name": ..., "arguments": {...}} '
                       "(or a list of them); this one is not JSON")
    return tuple(_tool_call(call, field) for call in items)


def convert_rows(rows: list[Row], schema: str, column_map: Mapping[str, str], file: str,
                 max_problems: int = 50) -> tuple[str, list[Conversation], list[Problem]]:
    """Detect the schema (when `auto`) and convert every row.

    Args:
        rows: The rows of one file.
        schema: `auto` or one of SCHEMAS.
        column_map: Column renames applied before detection.
        file: The file name for problems.
        max_problems: Stop collecting problems after this many.

    Returns:
        The schema used, the conversations of the good rows, and one problem per bad row.
    """
    mapped = [Row(r.line, apply_column_map(r.data, column_map)) for r in rows]
    if schema == "auto":
        detected = detect_schema(mapped[0].data) if mapped else None
        if detected is None:
            return "unknown", [], [Problem(describe_columns(mapped[0].data if mapped else {}), file,
                                           mapped[0].line if mapped else 1, "schema")]
        schema = detected
    elif schema not in SCHEMAS:
        return schema, [], [Problem(f"unknown schema '{schema}'; one of: auto, {', '.join(SCHEMAS)}", file, None,
                                    "schema")]
    conversations: list[Conversation] = []
    problems: list[Problem] = []
    for row in mapped:
        try:
            conversations.append(to_conversation(row, schema))
        except RowError as err:
            if len(problems) < max_problems:
                problems.append(Problem(err.message, file, row.line, err.field))
    return schema, conversations, problems
