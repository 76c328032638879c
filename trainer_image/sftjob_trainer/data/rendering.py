"""What every chat template shares: the rendered conversation with its trained spans, errors, the span rule.

The span rule, the same for every turn including the last: an assistant turn's content (with its
reasoning and tool calls, as the template renders them) plus the end-of-turn token the template
writes right after it (for example `<|im_end|>`), and nothing else: not the header before it, not
the whitespace or an EOS the template adds after the end-of-turn token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal, Protocol

from sftjob_trainer.data.conversation import THINK_CLOSE, THINK_OPEN, Conversation, Message

TrainOn = Literal["assistant", "last_assistant", "all"]
ReasoningMode = Literal["native", "inline", "none"]
# End-of-turn markers that templates write besides the EOS token.
KNOWN_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<|eom_id|>", "</s>", "<end_of_turn>", "<|endoftext|>",
                     "<|end_of_text|>")


class TemplateError(Exception):
    """A template that fails to render or whose turns cannot be located."""


class ReasoningNotRendered(TemplateError):
    """Rows carry reasoning that the chat template cannot render (`dataset.reasoning: drop` trains without it)."""


@dataclass(frozen=True)
class Rendered:
    """A rendered conversation with the character spans that carry loss."""

    text: str
    """The full text fed to the tokenizer."""
    trained: tuple[tuple[int, int], ...]
    """Sorted, disjoint `[start, end)` character spans whose tokens are trained."""
    turns: tuple[tuple[int, int], ...]
    """`[start, end)` spans of every assistant turn (response + end-of-turn marker), trained or not."""
    prompt_end: int
    """Where the last assistant turn's response starts (after its header): the generation prompt ends here."""
    reference: str
    """The text of the last assistant turn (or completion)."""
    left_out: tuple[int, ...] = ()
    """Indexes of the system, user or tool messages whose text the template does not render at all
    (Mistral v0.3 writes the system prompt only into a conversation that ends with a user turn)."""


class SpecialTokens(Protocol):
    """What a renderer needs from a tokenizer."""

    bos_token: str | None
    eos_token: str | None


def trained_spans(turns: list[tuple[int, int]], weights: list[int], train_on: TrainOn,
                  length: int) -> tuple[tuple[int, int], ...]:
    """The spans `train_on` trains: the whole text, the last assistant turn, or every turn of weight 1."""
    if train_on == "all":
        return ((0, length),)
    if train_on == "last_assistant":
        return tuple(turns[-1:]) if weights and weights[-1] else ()
    return tuple(turn for turn, weight in zip(turns, weights, strict=True) if weight)


def last_answer(conversation: Conversation) -> str:
    """The text of the last assistant turn ("" without one): `Rendered.reference`."""
    for message in reversed(conversation.messages):
        if message.role == "assistant":
            return message.content
    return ""


def inline_reasoning(reasoning: str, content: str) -> str:
    """A turn's reasoning written before its answer, as reasoning models write it."""
    return f"{THINK_OPEN}\n{reasoning}\n{THINK_CLOSE}\n\n{content}"


def with_inline_reasoning(messages: Sequence[Message]) -> list[Message]:
    """The messages with each turn's reasoning written into its content (`inline_reasoning`)."""
    return [replace(m, content=inline_reasoning(m.reasoning, m.content), reasoning="") if m.reasoning else m
            for m in messages]

