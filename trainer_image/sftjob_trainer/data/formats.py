"""Row layouts (schemas), detected from the columns, and their mapping to one conversation form.

Pure functions: rows in, `Conversation`s and `Problem`s out. Every format becomes a list of
messages with roles system/user/assistant/tool; prompt/completion keeps a flag so it can be
joined plainly when no chat template applies, and plain `text` is trained on every token.

Besides its text an assistant message carries its reasoning (from `reasoning_content`, `reasoning`,
`thinking`, typed `reasoning` content parts, or a leading `<think>…</think>` block), its tool calls
in the OpenAI form (from `tool_calls`, typed `tool_call` parts, or ShareGPT `function_call` turns;
JSON-string arguments are parsed into objects, as chat templates expect) and its loss weight (OpenAI's
`weight: 0|1`).

The row's fields are read by `row_fields`; the conversation form is `conversation`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sftjob_trainer.data.conversation import Conversation, Message
from sftjob_trainer.data.problems import Problem
from sftjob_trainer.data.readers import Row
from sftjob_trainer.data.row_fields import (
    RowError,
    maybe_json,
    message_list,
    read_messages,
    read_sharegpt,
    text_field,
    tool_definitions,
)

SCHEMAS = ("prompt_completion", "messages", "alpaca", "sharegpt", "text")
# What each schema requires, in detection order (the first match wins).
REQUIRED = {
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "alpaca": ("instruction", "output"),
    "prompt_completion": ("prompt", "completion"),
    "text": ("text",),
}


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
        chat_turns = read_messages(message_list(data, "messages"), "messages")
        check_turns(chat_turns, _fields("messages", len(chat_turns)), "role")
        return Conversation(chat_turns, "chat", row.line, tool_definitions(data))
    if schema == "sharegpt":
        turns = read_sharegpt(message_list(data, "conversations"))
        check_turns(turns, _fields("conversations", len(turns)), "from")
        return Conversation(turns, "chat", row.line, tool_definitions(data))
    if schema == "alpaca":
        instruction = text_field(data, "instruction")
        extra = text_field(data, "input", optional=True)
        prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        messages = [Message("user", prompt), Message("assistant", text_field(data, "output"))]
        if "system" in data and data["system"] not in (None, ""):
            messages.insert(0, Message("system", text_field(data, "system")))
        return Conversation(tuple(messages), "chat", row.line)
    if schema == "prompt_completion":
        completion_key = "completion" if "completion" in data or "response" not in data else "response"
        if isinstance(maybe_json(data.get("prompt")), list) and isinstance(maybe_json(data.get(completion_key)),
                                                                            list):
            # TRL's conversational prompt/completion: both sides are message lists.
            prompt_turns = read_messages(message_list(data, "prompt"), "prompt")
            completion_turns = read_messages(message_list(data, completion_key), completion_key)
            check_turns(prompt_turns + completion_turns,
                        _fields("prompt", len(prompt_turns)) + _fields(completion_key, len(completion_turns)), "role")
            return Conversation(prompt_turns + completion_turns, "chat", row.line, tool_definitions(data))
        return Conversation((Message("user", text_field(data, "prompt")),
                             Message("assistant", text_field(data, completion_key))), "prompt_completion", row.line)
    if schema == "text":
        return Conversation((Message("text", text_field(data, "text")),), "text", row.line)
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
