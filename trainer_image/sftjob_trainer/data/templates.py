"""Chat templates that render a conversation to text AND say which characters carry loss.

Pure functions. Three kinds of template:

- named templates (`chatml`, `llama3`, `zephyr`) written out in Python, so every span is known exactly;
- Jinja templates (the tokenizer's own or an inline one from the spec), rendered in a sandbox the
  way transformers' `apply_chat_template` does (`{% generation %}` blocks render as plain text). Their
  spans come from the template's own structure, not from searching the text: every text field of
  every message (content, reasoning, tool-call names) is wrapped in invisible marks, and where the
  marks land in the rendering says where each field is. An assistant turn starts where the turn
  header written by the template's generation prompt ends, and ends with the first end-of-turn token
  after its last field (see `JinjaTemplate`);
- `none`: prompt/completion joined plainly (prompt, then completion, then EOS) and plain text.

`resolve_template` picks the renderer for a job's `chatTemplate`. The span rule every renderer follows is in
`rendering`; the named templates and the plain join are in `named_templates`, the Jinja ones in `jinja_template`.
"""

from __future__ import annotations

from typing import Any

from sftjob_trainer.data.jinja_template import JinjaTemplate
from sftjob_trainer.data.named_templates import NAMED, NamedTemplate, PlainTemplate, named_template

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
