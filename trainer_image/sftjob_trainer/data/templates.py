"""Chat templates that render a conversation to text AND say which characters carry loss.

Pure functions. Three kinds of template:

- named templates (`chatml`, `llama3`, `zephyr`) written out here, so every span is known exactly;
- Jinja templates (the tokenizer's own or an inline one from the spec), rendered in a sandbox the
  way transformers does; the span of assistant turn *i* is found by rendering the conversation up
  to turn *i* with the generation prompt (the prompt side) and through turn *i* (the end of the
  turn): no `{% generation %}` markers are needed;
- `none`: prompt/completion joined plainly (prompt, then completion, then EOS) and plain text.

The span of a trained turn covers the response and the end-of-turn marker that follows it (for
example `<|im_end|>`), but not the whitespace after the marker.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

from sftjob_trainer.data.formats import Conversation, Message

TrainOn = Literal["assistant", "last_assistant", "all"]
NAMED = ("chatml", "llama3", "zephyr")
# End-of-turn markers that templates use besides the EOS token; the Jinja fallback looks for them after a turn.
KNOWN_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<|eom_id|>", "</s>", "<end_of_turn>", "<|endoftext|>")


class TemplateError(Exception):
    """A template that fails to render or whose turns cannot be located."""


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


class SpecialTokens(Protocol):
    """What a renderer needs from a tokenizer."""

    bos_token: str | None
    eos_token: str | None


def _select(turns: list[tuple[int, int]], train_on: TrainOn, length: int) -> tuple[tuple[int, int], ...]:
    if train_on == "all":
        return ((0, length),)
    if train_on == "last_assistant":
        return tuple(turns[-1:])
    return tuple(turns)


def _reference(conversation: Conversation) -> str:
    for message in reversed(conversation.messages):
        if message.role == "assistant":
            return message.content
    return ""


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
    """A template written out in Python: header, content and end-of-turn marker per message."""

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
        prompt_end = 0
        if conversation.tools and self.name == "chatml":
            system = "# Tools\n\n<tools>\n" + "\n".join(json.dumps(dict(t), ensure_ascii=False)
                                                         for t in conversation.tools) + "\n</tools>"
            messages = list(conversation.messages)
            if messages and messages[0].role == "system":
                messages[0] = Message("system", f"{messages[0].content}\n\n{system}")
            else:
                messages.insert(0, Message("system", system))
        else:
            messages = list(conversation.messages)
        for message in messages:
            header = self.header(message.role)
            content = message.content.strip() if self.strip_content else message.content
            if message.role == "assistant" and message.tool_calls:
                content += _calls_text(message)
            start = pos + len(header)
            body = content + self.end_of_turn
            if message.role == "assistant":
                turns.append((start, start + len(body)))
                prompt_end = start
            chunk = header + body + self.after_turn
            parts.append(chunk)
            pos += len(chunk)
        if add_generation_prompt:
            header = self.header("assistant")
            parts.append(header)
            prompt_end = pos + len(header)
        text = "".join(parts)
        return Rendered(text, _select(turns, train_on, len(text)), tuple(turns), prompt_end, _reference(conversation))


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


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)  # local date, as transformers gives templates


@dataclass
class JinjaTemplate:
    """A Jinja chat template (the tokenizer's own or an inline one), rendered in a sandbox."""

    name: str
    """`tokenizer` or `inline`."""
    source: str
    """The Jinja text."""
    variables: Mapping[str, Any]
    """bos_token, eos_token and the other special tokens the template may use."""

    def __post_init__(self) -> None:
        from jinja2 import TemplateError as JinjaError
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        # The same environment transformers builds for apply_chat_template.
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        env.filters["tojson"] = lambda x, indent=None, separators=None, sort_keys=False, ensure_ascii=False: (
            json.dumps(x, indent=indent, separators=separators, sort_keys=sort_keys, ensure_ascii=ensure_ascii))
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        try:
            self._template = env.from_string(self.source)
        except JinjaError as err:
            raise TemplateError(f"the {self.name} chat template is not valid Jinja: {err}") from None

    def _run(self, messages: list[Message], tools: tuple[Mapping[str, Any], ...], generation: bool) -> str:
        from jinja2 import TemplateError as JinjaError

        try:
            return self._template.render(messages=[m.to_jinja() for m in messages],
                                         tools=[dict(t) for t in tools] or None,
                                         add_generation_prompt=generation, **self.variables)
        except TemplateError:
            raise
        except (JinjaError, TypeError, ValueError, KeyError, AttributeError) as err:
            raise TemplateError(f"the {self.name} chat template failed to render: {err}") from None

    def render(self, conversation: Conversation, train_on: TrainOn, add_generation_prompt: bool = False) -> Rendered:
        """Render `conversation`; locate each assistant turn by rendering its prefixes.

        Raises:
            TemplateError: When the template fails or an assistant turn cannot be located in the text.
        """
        messages = list(conversation.messages)
        text = self._run(messages, conversation.tools, add_generation_prompt)
        turns: list[tuple[int, int]] = []
        cursor, prompt_end = 0, 0
        for i in conversation.assistant_indexes:
            before = self._run(messages[:i], conversation.tools, True)
            through = self._run(messages[: i + 1], conversation.tools, False)
            if text.startswith(before) and len(before) >= cursor:
                start = len(before)
                if text.startswith(through) and len(through) > start:
                    end = max(len(through.rstrip()), start)
                else:  # the turn renders differently once later turns follow: it ends at its end-of-turn marker
                    end = self._marker_end(text, start)
            else:
                start, end = self._search(text, messages[i], cursor)
            turns.append((start, end))
            cursor, prompt_end = end, start
        if add_generation_prompt:
            prompt_end = len(text)
        return Rendered(text, _select(turns, train_on, len(text)), tuple(turns), prompt_end, _reference(conversation))

    def _markers(self) -> list[str]:
        return [m for m in dict.fromkeys([str(self.variables.get("eos_token") or ""), *KNOWN_END_OF_TURN]) if m]

    def _marker_end(self, text: str, start: int) -> int:
        found = [(pos, marker) for marker in self._markers() if (pos := text.find(marker, start)) >= 0]
        if not found:
            raise TemplateError(f"the {self.name} chat template ends an assistant turn without an EOS or "
                                "end-of-turn token; loss masks (and stopping) need one")
        pos, marker = min(found)
        return pos + len(marker)

    def _search(self, text: str, message: Message, cursor: int) -> tuple[int, int]:
        # The template re-renders earlier turns differently (e.g. drops reasoning): find the response itself
        # and extend over an end-of-turn marker that directly follows it.
        content = message.content.strip()
        start = text.find(content, cursor) if content else -1
        if start < 0:
            raise TemplateError(f"the {self.name} chat template does not reproduce an assistant turn verbatim; "
                                "loss masks cannot be located (use chatTemplate: chatml or an inline template)")
        end = start + len(content)
        rest = text[end:]
        for marker in self._markers():
            stripped = rest.lstrip(" ")
            if stripped.startswith(marker):
                end += len(rest) - len(stripped) + len(marker)
                break
        return start, end


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
        return Rendered(text, _select([turn], train_on, len(text)), (turn,), len(prompt), completion)


Renderer = NamedTemplate | JinjaTemplate | PlainTemplate


def _special_variables(tokenizer: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
        value = getattr(tokenizer, key, None)
        out[key] = value if isinstance(value, str) else ""
    return out


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
            return JinjaTemplate("tokenizer", own, _special_variables(tokenizer))
        return PlainTemplate(eos) if kind == "prompt_completion" else named_template("chatml", tokenizer)
    if setting == "none":
        return PlainTemplate(eos)
    if setting in NAMED:
        return named_template(setting, tokenizer)
    return JinjaTemplate("inline", setting, _special_variables(tokenizer))


def end_of_turn_marker(renderer: Renderer) -> str | None:
    """The end-of-turn text of a named template (None for Jinja and plain: the EOS token serves)."""
    return renderer.end_of_turn if isinstance(renderer, NamedTemplate) else None
