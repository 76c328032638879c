"""The one conversation form every row format maps to: messages with roles, reasoning, tool calls and weights.

Pure data: `formats` builds these from rows, the chat templates render them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

# Message fields that hold an assistant turn's reasoning, in the order they are read.
REASONING_FIELDS = ("reasoning_content", "reasoning", "thinking")
# The block a reasoning model writes before its answer (DeepSeek-R1, Qwen3, their distillations).
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
Kind = Literal["chat", "prompt_completion", "text"]


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
            out["tool_calls"] = [plain_copy(call) for call in self.tool_calls]
        if self.name is not None:
            out["name"] = self.name
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        if self.reasoning:
            out.update(dict.fromkeys(REASONING_FIELDS, self.reasoning))
        return out


def plain_copy(value: Any) -> Any:
    """A copy of a row's nested mappings and sequences as dicts and lists.

    Templates get copies, so a template can never change the conversation it renders.
    """
    if isinstance(value, Mapping):
        return {k: plain_copy(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain_copy(v) for v in value]
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
        parts = [json.dumps(plain_copy(self.tools), sort_keys=True) if self.tools else ""]
        for m in self.messages:
            calls = json.dumps(plain_copy(m.tool_calls), sort_keys=True) if m.tool_calls else ""
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
