"""The exported model serves as it was trained: it carries the chat template and the stop tokens of training.

A server renders prompts with the tokenizer's chat template and stops where `generation_config.json` says.
Saved as loaded, a tokenizer keeps the base model's template (or none) although the job may have trained with
a named, inline or fallback one, and the generation config keeps the base EOS although the job trained
end-of-turn markers: the served model then sees prompts it was not trained on, or never stops.

- `export_chat_template`: the Jinja source of the template the job trained with;
- `prepare_for_export`: puts it on the tokenizer and the stop tokens into the model's generation config;
- `write_generation_config`: writes that config next to an adapter (PEFT's `save_pretrained` writes none);
- `serving_check`: reloads an exported directory as a server does and checks a few held-out prompts: their
  tokens equal the trained ones, and greedy generation stops on a saved stop token.

An adapter directory holds the adapter, the tokenizer (with the trained template) and `generation_config.json`
(the base's with the trained stop tokens). Servers load the generation config from the base model's directory,
so serving an adapter as trained takes that file explicitly: vLLM's `--generation-config ADAPTER_DIR`, or
`GenerationConfig.from_pretrained(ADAPTER_DIR)` with transformers. A merged model's directory holds all three
in the places servers read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sftjob_trainer.data.conversation import Conversation
from sftjob_trainer.data.jinja_template import JinjaTemplate
from sftjob_trainer.data.named_templates import PLAIN_JINJA, NamedTemplate, named_template_jinja
from sftjob_trainer.data.templates import resolve_template

# The check generates for at most this many held-out prompts: it proves the export, not the model's quality.
MAX_PROMPTS = 8
# Tokens of each side shown where a served prompt first differs from the trained one.
DIFF_TOKENS = 8
# Characters of a generation shown when it does not stop.
SHOWN_CHARS = 80


def export_chat_template(setting: str, tokenizer: Any, kind: str) -> str | None:
    """The Jinja chat template a server should use for a job: the one its data was rendered with.

    Resolved as the data pipeline resolves it (`resolve_template`): the tokenizer's own template (returned
    unchanged), the spec's inline template, a named template or the ChatML fallback (their Jinja form, which
    renders exactly what training rendered), or the plain join of prompt and completion (`none`, and `auto`
    for prompt/completion rows when the tokenizer has no template): the texts joined, with an empty
    generation prompt.

    Args:
        setting: The spec's `dataset.chatTemplate`.
        tokenizer: The tokenizer the job trained with.
        kind: The kind of the training conversations (`chat`, `prompt_completion` or `text`). The pipeline reports
            only the template's name (`PreparedData.chat_template`): `text` when the data format is `text`, else
            `prompt_completion` when the name is `none`, else `chat` give the same template.

    Returns:
        The Jinja source, or None for plain text rows: no chat template applies to them, and the tokenizer's
        own (if any) stays as it is.
    """
    renderer = resolve_template(setting, tokenizer, kind)
    if isinstance(renderer, JinjaTemplate):
        return renderer.source
    if isinstance(renderer, NamedTemplate):
        return named_template_jinja(renderer.name)
    return None if kind == "text" else PLAIN_JINJA


def _base_model(model: Any) -> Any:
    # A PeftModel generates with its base model's generation config and saves none of its own.
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _generation_config(model: Any) -> Any:
    from transformers import GenerationConfig

    base = _base_model(model)
    if getattr(base, "generation_config", None) is None:
        base.generation_config = GenerationConfig.from_model_config(base.config)
    return base.generation_config


def _ids(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(value)] if isinstance(value, int) else [int(v) for v in value]


def _default_template(tokenizer: Any) -> Any:
    own = getattr(tokenizer, "chat_template", None)
    return own.get("default") if isinstance(own, dict) else own


def prepare_for_export(model: Any, tokenizer: Any, chat_template: str | None, stop_token_ids: Sequence[int]) -> None:
    """Put the trained chat template on the tokenizer and the stop tokens into the model's generation config.

    `save_pretrained` of the tokenizer then writes the template, and that of the model (or of a model merged
    from this PeftModel) writes `generation_config.json`; an adapter needs `write_generation_config`.

    Args:
        model: The trained model; for a PeftModel its base model's generation config is set.
        tokenizer: The tokenizer to export.
        chat_template: From `export_chat_template`; None leaves the tokenizer's template alone. A tokenizer with
            several named templates keeps them all when its default one is the trained one.
        stop_token_ids: EOS and the end-of-turn tokens of training (`PreparedData.stop_token_ids`). They become
            `eos_token_id`, in order and followed by the config's own stop tokens, so the base EOS still stops.
    """
    if chat_template is not None and _default_template(tokenizer) != chat_template:
        tokenizer.chat_template = chat_template
    config = _generation_config(model)
    stops = list(dict.fromkeys([*stop_token_ids, *_ids(config.eos_token_id)]))
    if stops:
        config.eos_token_id = stops
    if config.pad_token_id is None and tokenizer.pad_token_id is not None:
        config.pad_token_id = tokenizer.pad_token_id


def write_generation_config(model: Any, directory: Path) -> None:
    """Write the (base) model's `generation_config.json` into `directory`, e.g. next to a saved adapter."""
    _generation_config(model).save_pretrained(str(directory))


@dataclass(frozen=True)
class ServingSample:
    """A held-out conversation as a server receives it, and the prompt tokens the job trained with."""

    messages: list[dict[str, Any]]
    """The turns before the last assistant turn, as `apply_chat_template` takes them."""
    prompt_ids: list[int]
    """The trained prompt: the rendered conversation's tokens up to and including the last answer's header
    (`Example.prompt_ids`)."""
    tools: list[dict[str, Any]] | None = None
    """The tool definitions offered in the conversation."""


def serving_sample(conversation: Conversation, prompt_ids: list[int]) -> ServingSample:
    """The sample of a held-out conversation and its example's `prompt_ids`.

    Raises:
        ValueError: For a conversation without an assistant turn (plain text rows have no prompt to serve).
    """
    last = max((i for i, m in enumerate(conversation.messages) if m.role == "assistant"), default=None)
    if last is None:
        raise ValueError(f"line {conversation.line}: a conversation without an assistant turn has no prompt to serve")
    return ServingSample([m.to_jinja() for m in conversation.messages[:last]], prompt_ids,
                         [dict(t) for t in conversation.tools] or None)


@dataclass(frozen=True)
class ServingCheck:
    """What reloading an exported directory as a server does showed."""

    prompts: int
    """Held-out prompts checked."""
    template_matches: int
    """Prompts whose served tokens (the saved tokenizer's `apply_chat_template` with the generation prompt) equal
    the trained ones."""
    stops: int
    """Prompts whose greedy generation with the saved generation config ended on one of its stop tokens."""
    missing_stop_ids: tuple[int, ...] = ()
    """Stop tokens of training that the saved generation config does not list."""
    first_mismatch: str | None = None
    """Where the first served prompt that differs from the trained one differs, or why none rendered."""
    first_no_stop: str | None = None
    """The first generation that did not stop, shortened."""

    @property
    def passed(self) -> bool:
        """At least one prompt, every prompt served as trained, every generation stopped, and no stop token missing."""
        return 0 < self.prompts == self.template_matches == self.stops and not self.missing_stop_ids

    def to_wire(self) -> dict[str, Any]:
        """The manifest's `servingCheck`."""
        return {"passed": self.passed, "prompts": self.prompts, "templateMatches": self.template_matches,
                "stops": self.stops, "missingStopIds": list(self.missing_stop_ids),
                "firstMismatch": self.first_mismatch, "firstNoStop": self.first_no_stop}


def _load_served(directory: Path, adapter_base: Path | None, vocabulary: int) -> Any:
    """The model as a server loads it: the directory alone, or the base with the adapter of `directory`."""
    from transformers import AutoModelForCausalLM, GenerationConfig
    from transformers.utils import GENERATION_CONFIG_NAME

    if adapter_base is None:
        return AutoModelForCausalLM.from_pretrained(str(directory))
    from peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained(str(adapter_base))
    embeddings: Any = base.get_input_embeddings()
    if vocabulary > embeddings.num_embeddings:
        base.resize_token_embeddings(vocabulary)  # as AutoPeftModelForCausalLM does for an adapter that added tokens
    if (directory / GENERATION_CONFIG_NAME).is_file():
        base.generation_config = GenerationConfig.from_pretrained(str(directory))
    return PeftModel.from_pretrained(base, str(directory))


def _served_prompt(tokenizer: Any, sample: ServingSample) -> list[int] | str:
    """The served prompt's tokens, or why the saved tokenizer cannot render one."""
    from jinja2 import TemplateError as JinjaError

    try:
        ids = tokenizer.apply_chat_template(sample.messages, tools=sample.tools, add_generation_prompt=True,
                                            tokenize=True, return_dict=False)
    except (ValueError, TypeError, KeyError, JinjaError) as err:
        # No chat template (ValueError), or the template refuses or fails on the conversation: either way a
        # server cannot serve this prompt as trained, which is what the check reports.
        return f"{type(err).__name__}: {err}"
    return [int(i) for i in ids]


def _difference(tokenizer: Any, index: int, served: list[int], trained: list[int]) -> str:
    at = next((i for i, (a, b) in enumerate(zip(served, trained, strict=False)) if a != b),
              min(len(served), len(trained)))
    before = tokenizer.decode(trained[max(0, at - DIFF_TOKENS):at])
    served_text, trained_text = (tokenizer.decode(ids[at:at + DIFF_TOKENS]) for ids in (served, trained))
    return (f"prompt {index}: the served prompt ({len(served)} tokens) differs from the trained one "
            f"({len(trained)} tokens) at token {at}, after {before!r}: served {served_text!r}, "
            f"trained {trained_text!r}")


def serving_check(directory: Path, samples: Sequence[ServingSample], max_new_tokens: int,
                  adapter_base: Path | None = None, *, stop_token_ids: Sequence[int] = (),
                  device: str = "cpu") -> ServingCheck:
    """Reload an exported directory exactly as a server would and check up to MAX_PROMPTS held-out prompts.

    The tokenizer and the model come from `directory` alone (an adapter: the base from `adapter_base`, the
    adapter, tokenizer and generation config from `directory`). For each sample, the served prompt
    (`apply_chat_template` with the generation prompt, tokenized) must equal the trained `prompt_ids` token for
    token, the plain join included: a server tokenizes the prompt alone, so a token that training merged across
    the prompt/answer boundary is a real difference between training and serving. Then greedy generation from
    the trained prompt, with the saved generation config and no stop tokens passed, must end on one of the
    config's stop tokens within `max_new_tokens`; generating from the trained prompt keeps a template mismatch
    from also counting as a failure to stop (where the template matches, the two prompts are the same).

    Args:
        directory: The exported model or adapter directory.
        samples: Held-out prompts (see `serving_sample`); the first MAX_PROMPTS are checked.
        max_new_tokens: Tokens each generation may take.
        adapter_base: The base model directory, when `directory` holds an adapter.
        stop_token_ids: Stop tokens of training (`PreparedData.stop_token_ids`) that the saved generation config
            must list.
        device: Where to generate.

    Returns:
        The counts, the missing stop tokens, and the first mismatch and the first generation that did not stop.
    """
    import torch
    from transformers import AutoTokenizer

    checked = list(samples[:MAX_PROMPTS])
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    model = _load_served(directory, adapter_base, len(tokenizer)).to(device).eval()
    stops = set(_ids(model.generation_config.eos_token_id))
    missing = tuple(i for i in dict.fromkeys(stop_token_ids) if i not in stops)
    matches = stopped = 0
    first_mismatch = first_no_stop = None
    for index, sample in enumerate(checked):
        served = _served_prompt(tokenizer, sample)
        if served == sample.prompt_ids:
            matches += 1
        elif first_mismatch is None:
            first_mismatch = f"prompt {index}: {served}" if isinstance(served, str) else \
                _difference(tokenizer, index, served, sample.prompt_ids)
        ids = torch.tensor([sample.prompt_ids], device=device)
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False)
        new = out[0, ids.shape[1]:].tolist()
        if new and new[-1] in stops:
            stopped += 1
        elif first_no_stop is None:
            first_no_stop = (f"prompt {index}: no stop token {sorted(stops)} in {len(new)} new tokens: "
                             f"{tokenizer.decode(new)[:SHOWN_CHARS]!r}")
    return ServingCheck(len(checked), matches, stopped, missing, first_mismatch, first_no_stop)
