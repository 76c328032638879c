"""Jinja chat templates (the tokenizer's own or an inline one), rendered in a sandbox as transformers renders them.

`{% generation %}` blocks render as plain text. The spans come from the template's own structure, not from
searching the text: every text field of every message is wrapped in invisible marks (`template_marks`), and
where the marks land in the rendering says where each field is. An assistant turn starts where the turn header
written by the template's generation prompt ends, and ends with the first end-of-turn token after its last
field (see `JinjaTemplate`).

Reasoning is rendered by the template when it reads a reasoning field (`reasoning_content`, as Qwen3's does); a
template that reads none gets it written into the content before the answer (`<think>`, the reasoning,
`</think>`); a template that drops even that (DeepSeek-R1-Distill cuts everything up to `</think>`) cannot render
reasoning, and rows that carry it are refused (`ReasoningNotRendered`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sftjob_trainer.data.conversation import Conversation, Message
from sftjob_trainer.data.rendering import (
    KNOWN_END_OF_TURN,
    ReasoningMode,
    ReasoningNotRendered,
    Rendered,
    TemplateError,
    TrainOn,
    last_answer,
    trained_spans,
    with_inline_reasoning,
)
from sftjob_trainer.data.template_marks import MarkedField, common_prefix, mark_fields, unmark

# The conversation a template is probed with: does it render reasoning, which token ends its turns.
_PROBE_REASONING = "The user greets me; I greet back."
_PROBE = (Message("user", "Hi"), Message("assistant", "Hello", reasoning=_PROBE_REASONING))


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)  # local date, as transformers gives templates


def _generation_extension() -> type:
    """A Jinja extension for `{% generation %}…{% endgeneration %}`: the block renders as its plain body.

    transformers uses these blocks for `return_assistant_tokens_mask`; the spans here come from the
    template's structure, so the block only has to render as transformers renders it.
    """
    from jinja2 import nodes
    from jinja2.ext import Extension

    class Generation(Extension):
        tags = {"generation"}  # noqa: RUF012 - the class attribute Jinja reads

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller: Callable[[], str]) -> str:
            return caller()

    return Generation


@dataclass
class JinjaTemplate:
    """A Jinja chat template (the tokenizer's own or an inline one), rendered in a sandbox.

    Where an assistant turn is, from the template's own structure:

    1. The conversation is rendered as it is (the text that is trained) and with every text field
       wrapped in marks; with the marks taken out the two must be equal, else the template changes a
       content beyond trimming it, and the turn-by-turn method below takes over.
    2. The turn's fields (reasoning, content, tool-call names) lie where their marks are.
    3. Its start: the conversation before the turn, rendered with the generation prompt, ends with the
       text that follows the nearest field before the turn (that message's closing tokens, then the
       header of the new turn). The turn starts where the full rendering stops agreeing with that text:
       right after the header, so whatever the template writes between the header and the content (a
       space, an empty think block) belongs to the turn, and a generation prompt that opens the answer
       (`<think>` and a newline) is not looked for in the turn.
    4. Its end: the first end-of-turn token after its last field (the EOS token, the token the template
       writes after a plain answer, or a well-known end-of-turn marker).

    Templates whose rendering of a content cannot be marked fall back to rendering the conversation
    turn by turn; where a turn cannot be found that way either, its text is searched for and the row
    is refused unless it occurs exactly once.
    """

    name: str
    """`tokenizer` or `inline`."""
    source: str
    """The Jinja text."""
    variables: Mapping[str, Any]
    """bos_token, eos_token and the other special tokens the template may use."""
    special_tokens: tuple[str, ...] = ()
    """The tokenizer's special tokens: the one a plain answer is closed with is an end-of-turn token."""
    _probed: tuple[ReasoningMode, str | None] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        from jinja2 import TemplateError as JinjaError
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        # The same environment transformers builds for apply_chat_template.
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=[_generation_extension(), loopcontrols])
        env.filters["tojson"] = lambda x, indent=None, separators=None, sort_keys=False, ensure_ascii=False: (
            json.dumps(x, indent=indent, separators=separators, sort_keys=sort_keys, ensure_ascii=ensure_ascii))
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        try:
            self._template = env.from_string(self.source)
        except JinjaError as err:
            raise TemplateError(f"the {self.name} chat template is not valid Jinja: {err}") from None

    def _run(self, messages: Sequence[Message], tools: Sequence[Mapping[str, Any]], generation: bool) -> str:
        from jinja2 import TemplateError as JinjaError

        try:
            return self._template.render(messages=[m.to_jinja() for m in messages],
                                         tools=[dict(t) for t in tools] or None,
                                         add_generation_prompt=generation, **self.variables)
        except TemplateError:
            raise
        except (JinjaError, TypeError, ValueError, KeyError, AttributeError) as err:
            hint = ""
            if any(m.tool_calls for m in messages):
                hint = " (the conversation has tool calls: does this template support tool calling?)"
            raise TemplateError(f"the {self.name} chat template failed to render: {err}{hint}") from None

    def _probe(self) -> tuple[ReasoningMode, str | None]:
        """How this template renders reasoning, and the end-of-turn token it writes after a plain answer."""
        if self._probed is None:
            probed: tuple[ReasoningMode, str | None] = ("none", self._learned_end_of_turn())
            for mode in ("native", "inline"):
                messages = list(_PROBE) if mode == "native" else with_inline_reasoning(_PROBE)
                span, text = self._probe_span(messages, "reasoning" if mode == "native" else "content")
                if span is not None and _PROBE_REASONING in text[span[0]:span[1]]:
                    probed = (mode, probed[1])
                    break
            self._probed = probed
        return self._probed

    def _probe_span(self, messages: list[Message], kind: str) -> tuple[tuple[int, int] | None, str]:
        """Where a field of the probe's answer lands in its rendering (None: not rendered), and the text."""
        marked = mark_fields(messages)
        if marked is None:  # never: the probe's texts hold no marks
            return None, ""
        try:
            found = unmark(self._run(marked[0], (), False))
        except TemplateError:
            return None, ""
        return found.span(next(i for i, f in enumerate(marked[1]) if f.message == 1 and f.kind == kind)), found.text

    def _learned_end_of_turn(self) -> str | None:
        span, text = self._probe_span([replace(m, reasoning="") for m in _PROBE], "content")
        if span is None:
            return None
        after = text[span[1]:].lstrip()
        return max((t for t in self.special_tokens if t and after.startswith(t)), key=len, default=None)

    @property
    def reasoning_mode(self) -> ReasoningMode:
        """`native` (the template reads `reasoning_content`), `inline` (written into the content) or `none`."""
        return self._probe()[0]

    def end_of_turn_markers(self) -> list[str]:
        """Tokens that end an assistant turn: the one written after a plain answer, EOS, and well-known ones."""
        learned = self._probe()[1]
        eos = str(self.variables.get("eos_token") or "")
        return [m for m in dict.fromkeys([learned or "", eos, *KNOWN_END_OF_TURN]) if m]

    def render(self, conversation: Conversation, train_on: TrainOn, add_generation_prompt: bool = False) -> Rendered:
        """Render `conversation` and locate each assistant turn from the template's structure.

        Raises:
            ReasoningNotRendered: When the conversation has reasoning and the template cannot render it.
            TemplateError: When the template fails, drops an assistant turn or its tool calls, or a turn
                cannot be located exactly.
        """
        messages = list(conversation.messages)
        if any(m.reasoning for m in messages):
            mode = self.reasoning_mode
            if mode == "none":
                raise ReasoningNotRendered(
                    f"the {self.name} chat template cannot render reasoning: it reads no reasoning field "
                    "(reasoning_content) and drops a <think>…</think> block written into the answer")
            if mode == "inline":
                messages = with_inline_reasoning(messages)
        tools = conversation.tools
        text = self._run(messages, tools, add_generation_prompt)
        located = self._locate(messages, tools, text, add_generation_prompt)
        turns, left_out = located if located is not None else (self._locate_turn_by_turn(messages, tools, text), ())
        weights = [m.weight for m in messages if m.role == "assistant"]
        prompt_end = len(text) if add_generation_prompt else (turns[-1][0] if turns else 0)
        return Rendered(text, trained_spans(turns, weights, train_on, len(text)), tuple(turns), prompt_end,
                        last_answer(conversation), left_out)

    def _locate(self, messages: list[Message], tools: Sequence[Mapping[str, Any]], text: str,
                generation: bool) -> tuple[list[tuple[int, int]], tuple[int, ...]] | None:
        """The turns found from the marks (see the class docstring) and the messages the template leaves out.

        None when the marks cannot tell.
        """
        marked = mark_fields(messages)
        if marked is None:
            return None
        marked_messages, fields = marked
        full = unmark(self._run(marked_messages, tools, generation))
        if full.text != text:
            return None
        spans = {i: span for i in range(len(fields)) if (span := full.span(i)) is not None}
        assistants = [i for i, m in enumerate(messages) if m.role == "assistant"]
        turns: list[tuple[int, int]] = []
        for index in assistants:
            self._check_rendered(messages, index, fields, spans, index == assistants[-1])
            own = [spans[i] for i, f in enumerate(fields) if f.message == index and i in spans]
            first, last = min(s for s, _ in own), max(e for _, e in own)
            anchor, anchor_id = max(((e, i) for i, (_, e) in spans.items()
                                     if fields[i].message != index and e <= first), default=(0, -1))
            prefix = unmark(self._run(marked_messages[:index], tools, True))
            prefix_spans = ((span[1], i) for i, f in enumerate(fields)
                            if f.message < index and (span := prefix.span(i)) is not None)
            prefix_anchor, prefix_anchor_id = max(prefix_spans, default=(0, -1))
            if prefix_anchor_id != anchor_id:  # the turn follows other text than the generation prompt's
                return None
            start = anchor + common_prefix(text[anchor:first], prefix.text[prefix_anchor:])
            following = [s for i, (s, _) in spans.items() if fields[i].message != index and s >= last]
            turns.append((start, self._end_of_turn(text, last, min(following, default=len(text)))))
        left_out = tuple(f.message for i, f in enumerate(fields) if f.kind == "content" and i not in spans
                         and messages[f.message].role != "assistant" and messages[f.message].content.strip())
        return turns, left_out

    def _check_rendered(self, messages: list[Message], index: int, fields: list[MarkedField],
                        spans: Mapping[int, tuple[int, int]], last: bool) -> None:
        message = messages[index]
        mine = {i: f for i, f in enumerate(fields) if f.message == index}
        if message.tool_calls and any(f.kind == "call" and i not in spans for i, f in mine.items()):
            raise TemplateError(f"the {self.name} chat template does not render the tool calls of "
                                f"messages[{index}] (it has no tool-call syntax of its own): use a template "
                                "with tool calling for these rows, or leave them out")
        if not any(i in spans for i in mine):
            raise TemplateError(f"the {self.name} chat template does not render messages[{index}] (an assistant "
                                "turn), so it cannot be trained")
        if last and any(f.kind == "reasoning" and i not in spans for i, f in mine.items()):
            raise ReasoningNotRendered(f"the {self.name} chat template does not render the reasoning of the "
                                       f"last assistant turn (messages[{index}])")
        markers = self.end_of_turn_markers()
        for call in message.tool_calls:
            arguments = call.get("function", call).get("arguments")
            written = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
            if any(m in written for m in markers):
                raise TemplateError(f"the arguments of a tool call in messages[{index}] contain an end-of-turn "
                                    "token: where the turn ends would be a guess")

    def _end_of_turn(self, text: str, after: int, limit: int) -> int:
        found = [(pos, -len(m), m) for m in self.end_of_turn_markers() if (pos := text.find(m, after, limit)) >= 0]
        if not found:
            raise TemplateError(f"the {self.name} chat template ends an assistant turn without an EOS or "
                                "end-of-turn token; loss masks (and stopping) need one")
        pos, _, marker = min(found)
        return pos + len(marker)

    def _locate_turn_by_turn(self, messages: list[Message], tools: Sequence[Mapping[str, Any]],
                             text: str) -> list[tuple[int, int]]:
        """Turns found by rendering the conversation up to each one; a turn's own text is searched for last."""
        turns: list[tuple[int, int]] = []
        cursor = 0
        for index, message in enumerate(messages):
            if message.role != "assistant":
                continue
            before = self._run(messages[:index], tools, True)
            through = self._run(messages[:index + 1], tools, False)
            start = len(before) if text.startswith(before) and len(before) >= cursor else \
                self._search(text, message, cursor)
            end = self._closing_end(text, start, through) if text.startswith(through) and len(through) > start \
                else self._end_of_turn(text, start, len(text))
            turns.append((start, end))
            cursor = end
        return turns

    def _closing_end(self, text: str, start: int, through: str) -> int:
        # The rendering through this turn ends with the turn's end-of-turn token, possibly followed by
        # whitespace and more tokens the template adds after the last turn (an EOS): the first of that run.
        region = text[start:len(through)].rstrip()
        pos, end = len(region), None
        while (marker := next((m for m in self.end_of_turn_markers() if region.endswith(m, 0, pos)), None)):
            pos -= len(marker)
            end = pos + len(marker)
            pos = len(region[:pos].rstrip())
        return start + end if end is not None else self._end_of_turn(text, start, len(text))

    def _search(self, text: str, message: Message, cursor: int) -> int:
        # The last resort: the turn's own text, which must occur exactly once after the previous turn.
        content = message.content.strip()
        count = text.count(content, cursor) if content else 0
        if count != 1:
            found = "does not occur" if count == 0 else f"occurs {count} times"
            raise TemplateError(f"the {self.name} chat template renders an assistant turn in a way its structure "
                                f"does not locate, and the turn's text {found} in the rendering: refusing to guess "
                                "the loss mask (use chatTemplate: chatml or an inline template)")
        return text.index(content, cursor)
