"""Invisible marks around each text field of a message, and where they land in a rendering.

`JinjaTemplate` renders a conversation with every field (content, reasoning, tool-call names) wrapped in
marks; where the marks are in the output says where each field is, whatever the template writes around it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from sftjob_trainer.data.conversation import Message, plain_copy

# Marks around each text field of a message: private-use code points, which no template or tokenizer
# treats specially; `\ue000{id}\ue001` opens field `id`, `\ue002{id}\ue001` closes it.
_OPEN, _SEP, _CLOSE = "\ue000", "\ue001", "\ue002"
_MARK = re.compile(f"([{_OPEN}{_CLOSE}])([0-9]+){_SEP}")


@dataclass(frozen=True)
class MarkedField:
    """A text field of a message that the marks locate."""

    message: int
    """Index of the message."""
    kind: Literal["content", "reasoning", "call"]
    """The content, the reasoning, or the name of a tool call."""


@dataclass(frozen=True)
class Located:
    """A rendering with its marks taken out: the text, and where each field's open and close marks were."""

    text: str
    opens: dict[int, list[int]]
    closes: dict[int, list[int]]

    def span(self, field_id: int) -> tuple[int, int] | None:
        """`[start, end)` of a field rendered exactly once, else None (dropped, cut, or rendered twice)."""
        opens, closes = self.opens.get(field_id, []), self.closes.get(field_id, [])
        if len(opens) == 1 and len(closes) == 1 and opens[0] <= closes[0]:
            return opens[0], closes[0]
        return None


def unmark(rendered: str) -> Located:
    """The rendering of marked messages with the marks taken out, and where each one stood."""
    parts: list[str] = []
    opens: dict[int, list[int]] = {}
    closes: dict[int, list[int]] = {}
    pos = length = 0
    for match in _MARK.finditer(rendered):
        parts.append(rendered[pos:match.start()])
        length += match.start() - pos
        (opens if match.group(1) == _OPEN else closes).setdefault(int(match.group(2)), []).append(length)
        pos = match.end()
    parts.append(rendered[pos:])
    return Located("".join(parts), opens, closes)


def _wrap(text: str, field_id: int) -> str:
    # The marks go inside the surrounding whitespace, so a template that trims or strips the content
    # renders it exactly as it renders the unmarked one.
    core = text.strip()
    if not core:
        return text
    lead = text[:len(text) - len(text.lstrip())]
    trail = text[len(text.rstrip()):]
    return f"{lead}{_OPEN}{field_id}{_SEP}{core}{_CLOSE}{field_id}{_SEP}{trail}"


def mark_fields(messages: Sequence[Message]) -> tuple[list[Message], list[MarkedField]] | None:
    """Copies of `messages` with every text field wrapped in marks, and the fields; None when a text holds a mark."""
    fields: list[MarkedField] = []
    out: list[Message] = []

    def mark(text: str, index: int, kind: Literal["content", "reasoning", "call"]) -> str:
        fields.append(MarkedField(index, kind))
        return _wrap(text, len(fields) - 1)

    for index, message in enumerate(messages):
        texts = [message.content, message.reasoning, *(json.dumps(plain_copy(c)) for c in message.tool_calls)]
        if any(ch in text for text in texts for ch in (_OPEN, _SEP, _CLOSE)):
            return None
        calls = []
        for call in message.tool_calls:
            function = call.get("function")
            if isinstance(function, Mapping) and isinstance(function.get("name"), str):
                call = {**call, "function": {**function, "name": mark(function["name"], index, "call")}}
            calls.append(call)
        out.append(replace(message, content=mark(message.content, index, "content"),
                           reasoning=mark(message.reasoning, index, "reasoning") if message.reasoning else "",
                           tool_calls=tuple(calls)))
    return out, fields


def common_prefix(a: str, b: str) -> int:
    """How many leading characters `a` and `b` share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n

