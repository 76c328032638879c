"""Chat templates that render a conversation to text AND say which characters carry loss.

Pure functions. Three kinds of template:

- named templates (`chatml`, `llama3`, `zephyr`) written out here, so every span is known exactly;
- Jinja templates (the tokenizer's own or an inline one from the spec), rendered in a sandbox the
  way transformers' `apply_chat_template` does (`{% generation %}` blocks render as plain text). Their
  spans come from the template's own structure, not from searching the text: every text field of
  every message (content, reasoning, tool-call names) is wrapped in invisible marks, and where the
  marks land in the rendering says where each field is. An assistant turn starts where the turn
  header written by the template's generation prompt ends, and ends with the first end-of-turn token
  after its last field (see `JinjaTemplate`);
- `none`: prompt/completion joined plainly (prompt, then completion, then EOS) and plain text.

The span rule, the same for every turn including the last: an assistant turn's content (with its
reasoning and tool calls, as the template renders them) plus the end-of-turn token the template
writes right after it (for example `<|im_end|>`), and nothing else: not the header before it, not
the whitespace or an EOS the template adds after the end-of-turn token.

Reasoning is rendered by the template when it reads a reasoning field (`reasoning_content`, as
Qwen3's does); a template that reads none gets it written into the content before the answer
(`<think>`, the reasoning, `</think>`); a template that drops even that (DeepSeek-R1-Distill cuts everything up to
`</think>`) cannot render reasoning, and rows that carry it are refused (`ReasoningNotRendered`).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal, Protocol

from sftjob_trainer.data.formats import THINK_CLOSE, THINK_OPEN, Conversation, Message, _plain

TrainOn = Literal["assistant", "last_assistant", "all"]
ReasoningMode = Literal["native", "inline", "none"]
NAMED = ("chatml", "llama3", "zephyr")
# End-of-turn markers that templates write besides the EOS token.
KNOWN_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<|eom_id|>", "</s>", "<end_of_turn>", "<|endoftext|>",
                     "<|end_of_text|>")
# Marks around each text field of a message: private-use code points, which no template or tokenizer
# treats specially; `\ue000{id}\ue001` opens field `id`, `\ue002{id}\ue001` closes it.
_OPEN, _SEP, _CLOSE = "\ue000", "\ue001", "\ue002"
_MARK = re.compile(f"([{_OPEN}{_CLOSE}])([0-9]+){_SEP}")
# The conversation a template is probed with: does it render reasoning, which token ends its turns.
_PROBE_REASONING = "The user greets me; I greet back."
_PROBE = (Message("user", "Hi"), Message("assistant", "Hello", reasoning=_PROBE_REASONING))


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


def _select(turns: list[tuple[int, int]], weights: list[int], train_on: TrainOn,
            length: int) -> tuple[tuple[int, int], ...]:
    if train_on == "all":
        return ((0, length),)
    if train_on == "last_assistant":
        return tuple(turns[-1:]) if weights and weights[-1] else ()
    return tuple(turn for turn, weight in zip(turns, weights, strict=True) if weight)


def _reference(conversation: Conversation) -> str:
    for message in reversed(conversation.messages):
        if message.role == "assistant":
            return message.content
    return ""


def inline_reasoning(reasoning: str, content: str) -> str:
    """A turn's reasoning written before its answer, as reasoning models write it."""
    return f"{THINK_OPEN}\n{reasoning}\n{THINK_CLOSE}\n\n{content}"


def _with_inline_reasoning(messages: Sequence[Message]) -> list[Message]:
    return [replace(m, content=inline_reasoning(m.reasoning, m.content), reasoning="") if m.reasoning else m
            for m in messages]


def _calls_text(message: Message) -> str:
    # Hermes/Qwen style tool calls, the most common convention of ChatML models.
    out = ""
    for call in message.tool_calls:
        fn = call.get("function", call)
        arguments = fn.get("arguments", {})
        if isinstance(arguments, str):
            with contextlib.suppress(json.JSONDecodeError):  # not JSON: keep the string as written
                arguments = json.loads(arguments)
        payload = json.dumps({"name": fn.get("name"), "arguments": arguments}, ensure_ascii=False)
        out += f"\n<tool_call>\n{payload}\n</tool_call>"
    return out.lstrip("\n") if not message.content else out


@dataclass(frozen=True)
class NamedTemplate:
    """A template written out in Python: header, content and end-of-turn marker per message.

    Reasoning is written into the content (`<think>…</think>` before the answer).
    """

    name: str
    bos: str
    header: Callable[[str], str]
    end_of_turn: str
    after_turn: str
    strip_content: bool = False

    def render(self, conversation: Conversation, train_on: TrainOn, add_generation_prompt: bool = False) -> Rendered:
        """Render `conversation` and locate its assistant turns."""
        parts = [self.bos]
        pos = len(self.bos)
        turns: list[tuple[int, int]] = []
        weights: list[int] = []
        prompt_end = 0
        messages = _with_inline_reasoning(conversation.messages)
        if conversation.tools and self.name == "chatml":
            system = "# Tools\n\n<tools>\n" + "\n".join(json.dumps(dict(t), ensure_ascii=False)
                                                         for t in conversation.tools) + "\n</tools>"
            if messages and messages[0].role == "system":
                messages[0] = Message("system", f"{messages[0].content}\n\n{system}")
            else:
                messages.insert(0, Message("system", system))
        for message in messages:
            header = self.header(message.role)
            content = message.content.strip() if self.strip_content else message.content
            if message.role == "assistant" and message.tool_calls:
                content += _calls_text(message)
            start = pos + len(header)
            body = content + self.end_of_turn
            if message.role == "assistant":
                turns.append((start, start + len(body)))
                weights.append(message.weight)
                prompt_end = start
            chunk = header + body + self.after_turn
            parts.append(chunk)
            pos += len(chunk)
        if add_generation_prompt:
            header = self.header("assistant")
            parts.append(header)
            prompt_end = pos + len(header)
        text = "".join(parts)
        return Rendered(text, _select(turns, weights, train_on, len(text)), tuple(turns), prompt_end,
                        _reference(conversation))


def named_template(name: str, tokens: SpecialTokens) -> NamedTemplate:
    """One of the NAMED templates, using the tokenizer's BOS/EOS where the original template does.

    Raises:
        TemplateError: For an unknown name.
    """
    if name == "chatml":
        return NamedTemplate("chatml", "", lambda role: f"<|im_start|>{role}\n", "<|im_end|>", "\n")
    if name == "llama3":
        # As Meta's Llama 3 Instruct template: BOS, role headers, stripped content, <|eot_id|> after each turn.
        return NamedTemplate("llama3", tokens.bos_token or "",
                             lambda role: f"<|start_header_id|>{'ipython' if role == 'tool' else role}"
                                          "<|end_header_id|>\n\n",
                             "<|eot_id|>", "", strip_content=True)
    if name == "zephyr":
        return NamedTemplate("zephyr", "", lambda role: f"<|{role}|>\n", tokens.eos_token or "</s>", "\n")
    raise TemplateError(f"unknown named chat template '{name}'; one of: {', '.join(NAMED)}")


# The Jinja form of `NamedTemplate.render`, for the tokenizer a job exports; BOS, HEADER (a Jinja expression of
# `role`), EOT, AFTER, TRIM and the ChatML-only TOOLS_* parts are filled in per template from _NAMED_JINJA_PARTS.
# Every tag strips the whitespace before it, so only the expressions write text, whatever the layout here.
_NAMED_JINJA = """
{%- macro header(role) %}{{- HEADER }}{%- endmacro %}
{{- BOS }}
TOOLS_DEFINED
{%- for message in messages %}
  {%- set raw = message.content if message.content is string else '' %}
  {%- if message.reasoning_content is string and message.reasoning_content %}
    {%- set raw = '<think>\\n' + message.reasoning_content + '\\n</think>\\n\\n' + raw %}
  {%- endif %}
  {%- set content = raw TRIM %}
TOOLS_IN_SYSTEM
  {%- if message.role == 'assistant' and message.tool_calls %}
    {%- set ns = namespace(calls='') %}
    {%- for call in message.tool_calls %}
      {%- set fn = call.function if call.function is defined else call %}
      {%- set arguments = fn.arguments if fn.arguments is defined else {} %}
      {%- set ns.calls = ns.calls + '\\n<tool_call>\\n{"name": ' + (fn.name if fn.name is defined else none) | tojson
          + ', "arguments": ' + (arguments if arguments is string else arguments | tojson) + '}\\n</tool_call>' %}
    {%- endfor %}
    {%- set content = content + (ns.calls if raw else ns.calls[1:]) %}
  {%- endif %}
  {{- header(message.role) + content + EOT + AFTER }}
{%- endfor %}
{%- if add_generation_prompt %}
  {{- header('assistant') }}
{%- endif %}
"""
# ChatML's tool definitions: a system turn of their own, or after the conversation's system prompt.
_TOOLS_DEFINED = """{%- if tools %}
  {%- set tools_block = '# Tools\\n\\n<tools>\\n' + tools | map('tojson') | join('\\n') + '\\n</tools>' %}
  {%- if not messages or messages[0].role != 'system' %}
    {{- header('system') + tools_block + EOT + AFTER }}
  {%- endif %}
{%- endif %}"""
_TOOLS_IN_SYSTEM = """  {%- if tools and loop.first and message.role == 'system' %}
    {%- set content = content + '\\n\\n' + tools_block %}
  {%- endif %}"""
# name -> (BOS, header of `role`, end-of-turn, after the turn, whether content is stripped, whether tool definitions
# are written), as `named_template` and `NamedTemplate.render` have them.
_NAMED_JINJA_PARTS: dict[str, tuple[str, str, str, str, bool, bool]] = {
    "chatml": ("''", "'<|im_start|>' + role + '\\n'", "'<|im_end|>'", "'\\n'", False, True),
    "llama3": ("(bos_token if bos_token else '')",
               "'<|start_header_id|>' + ('ipython' if role == 'tool' else role) + '<|end_header_id|>\\n\\n'",
               "'<|eot_id|>'", "''", True, False),
    "zephyr": ("''", "'<|' + role + '|>\\n'", "(eos_token if eos_token else '</s>')", "'\\n'", False, False),
}

# The Jinja form of `PlainTemplate` for prompts and conversations: every non-assistant text joined, then (without a
# generation prompt) the last answer and EOS; the generation prompt itself is empty.
PLAIN_JINJA = """
{%- for message in messages %}
  {%- if message.role != 'assistant' and message.content is string %}{{- message.content }}{%- endif %}
{%- endfor %}
{%- if not add_generation_prompt %}
  {%- set ns = namespace(answer='') %}
  {%- for message in messages %}
    {%- if message.role == 'assistant' %}{%- set ns.answer = message.content if message.content is string else '' %}
    {%- endif %}
  {%- endfor %}
  {{- ns.answer + (eos_token if eos_token else '') }}
{%- endif %}
"""


def named_template_jinja(name: str) -> str:
    """The Jinja source that renders what `named_template(name, tokenizer).render` renders.

    transformers' `apply_chat_template`, and the servers built on it, render it with the tokenizer's own BOS/EOS,
    as the named template takes them from the tokenizer it trains with. Equal for every turn the pipeline
    trains on (system, user, assistant and tool turns, reasoning read from `reasoning_content` and written as
    a `<think>` block before the answer, tool calls, and ChatML's tool definitions), with one exception: a tool
    call's arguments given as a string are written as given, as Qwen's and Hermes' templates write them, where
    training writes them as JSON (the same text whenever the string is JSON as `json.dumps` writes it; the data
    formats parse JSON-object strings before rendering).

    Raises:
        TemplateError: For an unknown name.
    """
    if name not in _NAMED_JINJA_PARTS:
        raise TemplateError(f"unknown named chat template '{name}'; one of: {', '.join(NAMED)}")
    bos, header, eot, after, strip, tools = _NAMED_JINJA_PARTS[name]
    source = _NAMED_JINJA.replace("TOOLS_DEFINED\n", _TOOLS_DEFINED + "\n" if tools else "")
    source = source.replace("TOOLS_IN_SYSTEM\n", _TOOLS_IN_SYSTEM + "\n" if tools else "")
    source = source.replace(" TRIM", " | trim" if strip else "")
    return source.replace("HEADER", header).replace("BOS", bos).replace("EOT", eot).replace("AFTER", after)


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


@dataclass(frozen=True)
class _Field:
    """A text field of a message that the marks locate."""

    message: int
    """Index of the message."""
    kind: Literal["content", "reasoning", "call"]
    """The content, the reasoning, or the name of a tool call."""


@dataclass(frozen=True)
class _Located:
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


def _unmark(rendered: str) -> _Located:
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
    return _Located("".join(parts), opens, closes)


def _wrap(text: str, field_id: int) -> str:
    # The marks go inside the surrounding whitespace, so a template that trims or strips the content
    # renders it exactly as it renders the unmarked one.
    core = text.strip()
    if not core:
        return text
    lead = text[:len(text) - len(text.lstrip())]
    trail = text[len(text.rstrip()):]
    return f"{lead}{_OPEN}{field_id}{_SEP}{core}{_CLOSE}{field_id}{_SEP}{trail}"


def _marked(messages: Sequence[Message]) -> tuple[list[Message], list[_Field]] | None:
    """Copies of `messages` with every text field wrapped in marks, and the fields; None when a text holds a mark."""
    fields: list[_Field] = []
    out: list[Message] = []

    def mark(text: str, index: int, kind: Literal["content", "reasoning", "call"]) -> str:
        fields.append(_Field(index, kind))
        return _wrap(text, len(fields) - 1)

    for index, message in enumerate(messages):
        texts = [message.content, message.reasoning, *(json.dumps(_plain(c)) for c in message.tool_calls)]
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


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


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
                messages = list(_PROBE) if mode == "native" else _with_inline_reasoning(_PROBE)
                span, text = self._probe_span(messages, "reasoning" if mode == "native" else "content")
                if span is not None and _PROBE_REASONING in text[span[0]:span[1]]:
                    probed = (mode, probed[1])
                    break
            self._probed = probed
        return self._probed

    def _probe_span(self, messages: list[Message], kind: str) -> tuple[tuple[int, int] | None, str]:
        """Where a field of the probe's answer lands in its rendering (None: not rendered), and the text."""
        marked = _marked(messages)
        if marked is None:  # never: the probe's texts hold no marks
            return None, ""
        try:
            found = _unmark(self._run(marked[0], (), False))
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
                messages = _with_inline_reasoning(messages)
        tools = conversation.tools
        text = self._run(messages, tools, add_generation_prompt)
        located = self._locate(messages, tools, text, add_generation_prompt)
        turns, left_out = located if located is not None else (self._locate_turn_by_turn(messages, tools, text), ())
        weights = [m.weight for m in messages if m.role == "assistant"]
        prompt_end = len(text) if add_generation_prompt else (turns[-1][0] if turns else 0)
        return Rendered(text, _select(turns, weights, train_on, len(text)), tuple(turns), prompt_end,
                        _reference(conversation), left_out)

    def _locate(self, messages: list[Message], tools: Sequence[Mapping[str, Any]], text: str,
                generation: bool) -> tuple[list[tuple[int, int]], tuple[int, ...]] | None:
        """The turns found from the marks (see the class docstring) and the messages the template leaves out.

        None when the marks cannot tell.
        """
        marked = _marked(messages)
        if marked is None:
            return None
        marked_messages, fields = marked
        full = _unmark(self._run(marked_messages, tools, generation))
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
            prefix = _unmark(self._run(marked_messages[:index], tools, True))
            prefix_spans = ((span[1], i) for i, f in enumerate(fields)
                            if f.message < index and (span := prefix.span(i)) is not None)
            prefix_anchor, prefix_anchor_id = max(prefix_spans, default=(0, -1))
            if prefix_anchor_id != anchor_id:  # the turn follows other text than the generation prompt's
                return None
            start = anchor + _common_prefix(text[anchor:first], prefix.text[prefix_anchor:])
            following = [s for i, (s, _) in spans.items() if fields[i].message != index and s >= last]
            turns.append((start, self._end_of_turn(text, last, min(following, default=len(text)))))
        left_out = tuple(f.message for i, f in enumerate(fields) if f.kind == "content" and i not in spans
                         and messages[f.message].role != "assistant" and messages[f.message].content.strip())
        return turns, left_out

    def _check_rendered(self, messages: list[Message], index: int, fields: list[_Field],
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


@dataclass(frozen=True)
class PlainTemplate:
    """No chat template: prompt then completion then EOS (the seed's join), or text then EOS."""

    eos: str
    name: str = "none"

    def render(self, conversation: Conversation, train_on: TrainOn, add_generation_prompt: bool = False) -> Rendered:
        """Join the turns; the completion (all of a text row) plus EOS is trained."""
        if conversation.kind == "text":
            text = conversation.messages[0].content + self.eos
            return Rendered(text, ((0, len(text)),), (), 0, conversation.messages[0].content)
        prompt = "".join(m.content for m in conversation.messages if m.role != "assistant")
        completion = _reference(conversation)
        if add_generation_prompt:
            return Rendered(prompt, (), (), len(prompt), completion)
        text = prompt + completion + self.eos
        turn = (len(prompt), len(text))
        return Rendered(text, _select([turn], [1], train_on, len(text)), (turn,), len(prompt), completion)


Renderer = NamedTemplate | JinjaTemplate | PlainTemplate


def _special_variables(tokenizer: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
        value = getattr(tokenizer, key, None)
        out[key] = value if isinstance(value, str) else ""
    return out


def _special_tokens(tokenizer: Any) -> tuple[str, ...]:
    tokens = getattr(tokenizer, "all_special_tokens", None)
    return tuple(t for t in tokens if isinstance(t, str)) if isinstance(tokens, list | tuple) else ()


def resolve_template(setting: str, tokenizer: Any, kind: str) -> Renderer:
    """The renderer for the spec's `chatTemplate` and the data kind.

    `auto`: the tokenizer's own template when it has one; else prompt/completion strings are joined
    plainly and conversations use ChatML. Plain `text` rows are never templated.

    Raises:
        TemplateError: For an invalid inline template or an unknown name.
    """
    eos = getattr(tokenizer, "eos_token", None) or ""
    if kind == "text":
        return PlainTemplate(eos)
    if setting == "auto":
        own = getattr(tokenizer, "chat_template", None)
        if isinstance(own, dict):  # several named templates: the default one
            own = own.get("default")
        if isinstance(own, str) and own.strip():
            return JinjaTemplate("tokenizer", own, _special_variables(tokenizer), _special_tokens(tokenizer))
        return PlainTemplate(eos) if kind == "prompt_completion" else named_template("chatml", tokenizer)
    if setting == "none":
        return PlainTemplate(eos)
    if setting in NAMED:
        return named_template(setting, tokenizer)
    return JinjaTemplate("inline", setting, _special_variables(tokenizer), _special_tokens(tokenizer))


def end_of_turn_markers(renderer: Renderer) -> list[str]:
    """The end-of-turn texts a renderer writes (empty for the plain join: the EOS token serves)."""
    if isinstance(renderer, NamedTemplate):
        return [renderer.end_of_turn]
    if isinstance(renderer, JinjaTemplate):
        return renderer.end_of_turn_markers()
    return []
