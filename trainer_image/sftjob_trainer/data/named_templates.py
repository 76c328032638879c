"""Templates written out in Python (`chatml`, `llama3`, `zephyr`, and `none`'s plain join), and their Jinja forms.

Every span of these is known exactly as they are written. The Jinja forms go into the tokenizer a job exports,
so a server renders what training rendered.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass

from sftjob_trainer.data.conversation import Conversation, Message
from sftjob_trainer.data.rendering import (
    Rendered,
    SpecialTokens,
    TemplateError,
    TrainOn,
    last_answer,
    trained_spans,
    with_inline_reasoning,
)

NAMED = ("chatml", "llama3", "zephyr")


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
        messages = with_inline_reasoning(conversation.messages)
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
        return Rendered(text, trained_spans(turns, weights, train_on, len(text)), tuple(turns), prompt_end,
                        last_answer(conversation))


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
        completion = last_answer(conversation)
        if add_generation_prompt:
            return Rendered(prompt, (), (), len(prompt), completion)
        text = prompt + completion + self.eos
        turn = (len(prompt), len(text))
        return Rendered(text, trained_spans([turn], [1], train_on, len(text)), (turn,), len(prompt), completion)

