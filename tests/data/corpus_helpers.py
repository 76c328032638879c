"""The corpus of real chat templates and real SFT data, and an oracle for their loss masks.

The oracle shares no code with sftjob's data pipeline. It builds the chat messages of a row the way
transformers documents them, renders them with transformers' own `apply_chat_template`, and finds
the trained spans from the layout each template family is known to have: the trained span of an
assistant turn starts right after its header (`<|im_start|>assistant\\n`, `[/INST]`, ...) and ends
with the first end-of-turn marker after it. Tokens are trained when their first character lies in
a span (offsets from the fast tokenizer).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).parent / "fixtures"
TEMPLATES = FIXTURES / "templates"
CORPUS = FIXTURES / "corpus"
IGNORE = -100


@dataclass(frozen=True)
class Family:
    """What a template's tokenizer has and where its assistant turns are."""

    bos: str | None
    """The BOS token (None: the tokenizer has none)."""
    eos: str
    """The EOS token."""
    specials: tuple[str, ...]
    """Further special tokens the template writes."""
    headers: tuple[str, ...]
    """Text that opens an assistant turn: the trained span starts right after it."""
    end: str
    """The end-of-turn marker that closes an assistant turn (trained)."""
    native_reasoning: bool = False
    """Whether the template renders a `reasoning_content` field itself."""


_LLAMA = ("<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|python_tag|>")
_LLAMA_HEADER = ("<|start_header_id|>assistant<|end_header_id|>\n\n",)
_CHATML = ("<|im_start|>", "<|endoftext|>")
_CHATML_HEADER = ("<|im_start|>assistant\n",)
_PHI3 = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
_MISTRAL = ("[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]",
            "[/TOOL_RESULTS]")

FAMILIES: dict[str, Family] = {
    "llama-3.1": Family("<|begin_of_text|>", "<|eot_id|>", _LLAMA, _LLAMA_HEADER, "<|eot_id|>"),
    "llama-3.2": Family("<|begin_of_text|>", "<|eot_id|>", _LLAMA, _LLAMA_HEADER, "<|eot_id|>"),
    "llama-3-training": Family("<|begin_of_text|>", "<|eot_id|>", _LLAMA, _LLAMA_HEADER, "<|eot_id|>"),
    "qwen-2.5": Family(None, "<|im_end|>", _CHATML, _CHATML_HEADER, "<|im_end|>"),
    "qwen-3": Family(None, "<|im_end|>", _CHATML, _CHATML_HEADER, "<|im_end|>", native_reasoning=True),
    "qwen-3-training": Family(None, "<|im_end|>", _CHATML, _CHATML_HEADER, "<|im_end|>", native_reasoning=True),
    "mistral-v0.3": Family("<s>", "</s>", _MISTRAL, ("[/INST]", "[/TOOL_RESULTS]"), "</s>"),
    "gemma-2": Family("<bos>", "<eos>", ("<start_of_turn>", "<end_of_turn>"), ("<start_of_turn>model\n",),
                      "<end_of_turn>"),
    "phi-3": Family("<s>", "<|endoftext|>", _PHI3, ("<|assistant|>\n",), "<|end|>"),
    "phi-3.5": Family("<s>", "<|endoftext|>", _PHI3, ("<|assistant|>\n",), "<|end|>"),
    "phi-4": Family("<|endoftext|>", "<|im_end|>", ("<|im_start|>", "<|im_sep|>"),
                    ("<|im_start|>assistant<|im_sep|>",), "<|im_end|>"),
    "deepseek-r1-distill": Family("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", ("<｜User｜>", "<｜Assistant｜>"),
                                  ("<｜Assistant｜>",), "<｜end▁of▁sentence｜>"),
    "smollm2": Family("<|im_start|>", "<|im_end|>", ("<|endoftext|>",), _CHATML_HEADER, "<|im_end|>"),
}
# Tokens that real tokenizers of these families have as added (not special) tokens.
ADDED_TOKENS = ("<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>")

# The data shapes: file, schema.
SHAPES: dict[str, str] = {
    "messages": "messages.jsonl",
    "sharegpt": "sharegpt.json",
    "alpaca": "alpaca.json",
    "toolcalls_sharegpt": "toolcalls_sharegpt.json",
    "toolcalls_messages": "toolcalls_messages.jsonl",
    "reasoning": "reasoning.jsonl",
}


def template_text(name: str) -> str:
    """The Jinja text of a corpus template."""
    return (TEMPLATES / f"{name}.jinja").read_text(encoding="utf-8")


def build_family_tokenizer(base_dir: Path, name: str) -> Any:
    """A fast tokenizer from the base BPE with the family's special tokens and its real chat template."""
    from transformers import PreTrainedTokenizerFast

    family = FAMILIES[name]
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(base_dir / "tokenizer.json"))
    specials = [t for t in (family.bos, family.eos, *family.specials) if t]
    tokenizer.add_special_tokens({"additional_special_tokens": list(dict.fromkeys(specials))})
    tokenizer.add_tokens(list(ADDED_TOKENS))
    tokenizer.bos_token = family.bos
    tokenizer.eos_token = family.eos
    tokenizer.pad_token = "<|pad|>"
    tokenizer.chat_template = template_text(name)
    return tokenizer


def read_rows(shape: str) -> list[dict[str, Any]]:
    """The rows of a corpus file, in file order."""
    path = CORPUS / SHAPES[shape]
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    rows: list[dict[str, Any]] = json.loads(text)
    return rows


def row_lines(shape: str) -> list[int]:
    """The line each row of a corpus file starts on (as readers name it in errors)."""
    path = CORPUS / SHAPES[shape]
    lines = path.read_text(encoding="utf-8").splitlines()
    if path.suffix == ".jsonl":
        return [i + 1 for i, line in enumerate(lines) if line.strip()]
    return [i + 1 for i, line in enumerate(lines) if line == "  {"]


def _call(call: dict[str, Any]) -> dict[str, Any]:
    function = call.get("function", call)
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        try:
            parsed = json.loads(arguments)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            arguments = parsed
    out: dict[str, Any] = {"type": "function", "function": {"name": function["name"], "arguments": arguments}}
    if "id" in call:
        out["id"] = call["id"]
    return out


def _tools(row: dict[str, Any]) -> list[dict[str, Any]] | None:
    tools = row.get("tools")
    if isinstance(tools, str):
        tools = json.loads(tools)
    if not tools:
        return None
    return [t if "function" in t else {"type": "function", "function": t} for t in tools]


def _reasoned(message: dict[str, Any], reasoning: str | None, native: bool) -> dict[str, Any]:
    if not reasoning:
        return message
    if native:
        return {**message, "reasoning_content": reasoning, "reasoning": reasoning, "thinking": reasoning}
    return {**message, "content": f"<think>\n{reasoning}\n</think>\n\n{message.get('content') or ''}"}


def oracle_messages(shape: str, row: dict[str, Any], native_reasoning: bool,
                    drop_reasoning: bool = False) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The chat messages and tools of a row, in the form transformers' chat templates expect."""
    if shape == "alpaca":
        extra = row.get("input") or ""
        prompt = f"{row['instruction']}\n\n{extra}" if extra.strip() else row["instruction"]
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": row["output"]}], None
    if "conversations" in row:
        roles = {"human": "user", "gpt": "assistant", "system": "system", "observation": "tool"}
        messages: list[dict[str, Any]] = []
        for turn in row["conversations"]:
            if turn["from"] == "function_call":
                call = _call(json.loads(turn["value"]))
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
            else:
                messages.append({"role": roles[turn["from"]], "content": turn["value"]})
        return messages, _tools(row)
    messages = []
    for item in row["messages"]:
        content = item.get("content")
        calls = [_call(c) for c in item.get("tool_calls", [])]
        reasoning = None
        if isinstance(content, list):
            texts = []
            for part in content:
                if part["type"] == "text":
                    texts.append(part["value"])
                elif part["type"] == "reasoning":
                    reasoning = part["value"]
                else:
                    calls.append(_call(json.loads(part["value"])))
            content = "".join(texts)
        message: dict[str, Any] = {"role": item["role"], "content": content if content or not calls else None}
        if calls:
            message["tool_calls"] = calls
        messages.append(_reasoned(message, None if drop_reasoning else reasoning, native_reasoning))
    return messages, _tools(row)


def oracle_spans(text: str, family: Family) -> list[tuple[int, int]]:
    """`[start, end)` of every assistant turn: after its header, through the first end-of-turn marker."""
    heads = sorted((pos + len(h)) for h in family.headers for pos in _find_all(text, h))
    spans = []
    for start in heads:
        end = text.find(family.end, start)
        if end < 0:
            continue
        if any(start < other <= end for other in heads):  # another header first: this one opened no turn
            continue
        spans.append((start, end + len(family.end)))
    return spans


def _find_all(text: str, needle: str) -> list[int]:
    out, pos = [], text.find(needle)
    while pos >= 0:
        out.append(pos)
        pos = text.find(needle, pos + 1)
    return out


def oracle_example(tokenizer: Any, family: Family, messages: list[dict[str, Any]],
                   tools: list[dict[str, Any]] | None, weights: list[int] | None = None,
                   last_only: bool = False) -> tuple[list[int], list[int], str]:
    """Token ids and labels of a conversation as transformers renders it, and the text."""
    text = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False)
    spans = oracle_spans(text, family)
    if weights is not None:
        spans = [s for s, w in zip(spans, weights, strict=True) if w]
    if last_only:
        spans = spans[-1:]
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    labels = [token if any(s <= start < e for s, e in spans) else IGNORE
              for token, (start, _) in zip(encoded["input_ids"], encoded["offset_mapping"], strict=True)]
    return list(encoded["input_ids"]), labels, text
