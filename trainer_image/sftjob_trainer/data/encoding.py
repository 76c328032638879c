"""Conversations rendered, tokenized and masked; the stop tokens, samples and served prompts of the results.

The chat template gives the text and the character spans that carry loss; the tokenizer's offsets turn
those spans into labels (`tokens.mask_labels`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sftjob_trainer.data.conversation import Conversation
from sftjob_trainer.data.examples import Example
from sftjob_trainer.data.problems import Problem
from sftjob_trainer.data.rendering import KNOWN_END_OF_TURN, ReasoningNotRendered, Rendered, TemplateError, TrainOn
from sftjob_trainer.data.report import Sample
from sftjob_trainer.data.templates import Renderer, resolve_template
from sftjob_trainer.data.tokens import IGNORE_INDEX, ByteTokenizer, encode, mask_labels

# Examples shown with their trained tokens marked in the report.
SAMPLES = 2


@dataclass
class Encoded:
    """A conversation rendered, tokenized and masked, before the length policy."""

    conversation: Conversation
    rendered: Rendered
    ids: list[int]
    starts: list[int]
    labels: list[int]


class Renderers:
    """One renderer per data kind, resolved once."""

    def __init__(self, setting: str, tokenizer: Any) -> None:
        self.setting = setting
        self.tokenizer = tokenizer
        self.cache: dict[str, Renderer] = {}

    def get(self, kind: str) -> Renderer:
        """The renderer of a data kind (resolved on first use).

        Raises:
            TemplateError: For an invalid inline template or an unknown name.
        """
        if kind not in self.cache:
            self.cache[kind] = resolve_template(self.setting, self.tokenizer, kind)
        return self.cache[kind]


def render_all(conversations: list[Conversation], renderers: Renderers, train_on: TrainOn, tokenizer: Any,
               file: str, problems: list[Problem], unrendered_reasoning: list[Problem]) -> list[Encoded]:
    """Render, tokenize and mask.

    A row the template cannot render goes to `problems`; one whose reasoning it cannot render goes to
    `unrendered_reasoning` (a preflight matter of `dataset.reasoning`).
    """
    rendered: list[tuple[Conversation, Rendered]] = []
    for conv in conversations:
        try:
            rendered.append((conv, renderers.get(conv.kind).render(conv, train_on)))
        except ReasoningNotRendered as err:
            unrendered_reasoning.append(Problem(
                f"{err}; this row carries reasoning: set dataset.reasoning: drop to train on the answers "
                "without it, or use a chat template that renders reasoning (for DeepSeek-R1 distills, TRL's "
                "deepseek_r1_distill_training.jinja as an inline chatTemplate)", file, conv.line, "dataset.reasoning"))
        except TemplateError as err:
            problems.append(Problem(str(err), file, conv.line, "chatTemplate"))
    encoded = encode(tokenizer, [r.text for _, r in rendered])
    return [Encoded(conv, r, ids, starts, mask_labels(ids, starts, r.trained))
            for (conv, r), (ids, starts) in zip(rendered, encoded, strict=True)]


def served_prompt(conversation: Conversation) -> str:
    """`Example.served` of a held-out conversation: its turns before the last answer, and its tools, as JSON."""
    last = max((i for i, m in enumerate(conversation.messages) if m.role == "assistant"), default=None)
    if last is None or conversation.kind == "text":
        return ""
    return json.dumps({"messages": [m.to_jinja() for m in conversation.messages[:last]],
                       "tools": [dict(t) for t in conversation.tools] or None}, ensure_ascii=False)


def stop_token_ids(tokenizer: Any, renderer_markers: list[str]) -> list[int]:
    """EOS plus every end-of-turn marker that is a single token of this tokenizer."""
    out: list[int] = []
    eos = getattr(tokenizer, "eos_token_id", None)
    if isinstance(eos, int):
        out.append(eos)
    for marker in dict.fromkeys([*renderer_markers, *KNOWN_END_OF_TURN]):
        if isinstance(tokenizer, ByteTokenizer):
            token_id = tokenizer.convert_tokens_to_ids(marker)
        else:
            pieces = tokenizer(marker, add_special_tokens=False)["input_ids"]
            token_id = pieces[0] if len(pieces) == 1 else None
        if token_id is not None and token_id not in out:
            out.append(token_id)
    return out


def token_samples(tokenizer: Any, examples: list[Example]) -> list[Sample]:
    """The first SAMPLES examples decoded, in runs of trained and untrained tokens."""
    samples = []
    for ex in examples[:SAMPLES]:
        segments: list[tuple[str, bool]] = []
        run: list[int] = []
        flag = False
        for token, label in zip(ex.input_ids, ex.labels, strict=True):
            trained = label != IGNORE_INDEX
            if run and trained != flag:
                segments.append((tokenizer.decode(run), flag))
                run = []
            run.append(token)
            flag = trained
        if run:
            segments.append((tokenizer.decode(run), flag))
        samples.append(Sample(ex.line, segments))
    return samples
