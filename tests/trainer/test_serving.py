"""An exported model serves as it was trained: the trained chat template and stop tokens travel with it.

Every template source the data pipeline has (the tokenizer's own, inline, chatml, llama3, zephyr, and for a
tokenizer without a template the ChatML fallback of conversations and the plain join of prompt/completion rows;
the spec has no `none`) is exported with and without `prepare_for_export`,
and `serving_check` reloads the directory as a server does: prepared, every held-out prompt is served with the
trained tokens and generation stops; unprepared, the check says which of the two broke. The prompts and stop
tokens come from the real data pipeline (`analyze`), as the driver takes them from `prepare_dataset`.

The fast cases use a tiny random model that stands in for a trained one: its final norm is zeroed, so it always
writes `<|endoftext|>`, an end-of-turn marker that training lists as a stop token but the base EOS (`</s>`) is
not. Real stopping is shown on SmolLM2-135M-Instruct.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sftjob_api.types import DatasetSpec, ModelSpec
from sftjob_trainer.data import analyze, read_dataset
from sftjob_trainer.data.formats import convert_rows
from sftjob_trainer.data.named_templates import PLAIN_JINJA, named_template_jinja
from sftjob_trainer.serving import (
    MAX_PROMPTS,
    ServingCheck,
    ServingSample,
    export_chat_template,
    prepare_for_export,
    serving_check,
    serving_sample,
    write_generation_config,
)

TEMPLATES = Path(__file__).resolve().parents[1] / "data" / "fixtures" / "templates"
# The tiny model's own template: SmolLM2's (ChatML, and a default system prompt when a conversation has none).
OWN_TEMPLATE = (TEMPLATES / "smollm2.jinja").read_text(encoding="utf-8")
INLINE = ("{% for m in messages %}{{ '### ' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '### assistant\\n' }}{% endif %}")
EXTRA_TOKENS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "</s>"]
MAX_NEW_TOKENS = 4
MAX_SEQ_LENGTH = 256


def chat(*turns: tuple[str, str]) -> dict[str, Any]:
    return {"messages": [{"role": role, "content": content} for role, content in turns]}


CHAT_TRAIN = [chat(("user", f"Count to {n}."), ("assistant", " ".join(str(i) for i in range(1, n + 1))))
              for n in range(2, 6)]
# Held out: with a system prompt, without one, and two turns.
CHAT_VALIDATION = [
    chat(("system", "Answer in one word."), ("user", "What is the capital of France?"), ("assistant", "Paris")),
    chat(("user", "What is 2 plus 2? Reply with just the number."), ("assistant", "4")),
    chat(("user", "Say hello."), ("assistant", "Hello!"), ("user", "Now say goodbye."), ("assistant", "Goodbye!")),
]
PC_TRAIN = [{"prompt": f"Copy: {w}\n", "completion": f" {w}"} for w in ("red green", "blue", "one two three", "up")]
PC_VALIDATION = [{"prompt": f"Copy: {w}\n", "completion": f" {w}"} for w in ("left right", "cat", "sun moon star")]


@dataclass(frozen=True)
class Source:
    """A template source: the spec's setting, whether the tokenizer has its own template, and the rows."""

    setting: str
    own_template: bool
    chat: bool
    trained_as: str
    """`PreparedData.chat_template`: which template the pipeline rendered with."""
    unprepared_matches: int
    """Held-out prompts an unprepared export still serves as trained (of 3)."""
    unprepared_diff: str | None
    """What the unprepared check's first mismatch says."""


NO_TEMPLATE = "tokenizer.chat_template is not set"
SOURCES = {
    "tokenizer": Source("auto", True, True, "tokenizer", 3, None),
    "inline": Source(INLINE, True, True, "inline", 0, "trained '###"),
    # SmolLM2's template is ChatML given a system prompt; without one it writes its own.
    "chatml": Source("chatml", True, True, "chatml", 1, "after '<|im_start|>': served 'system"),
    "llama3": Source("llama3", True, True, "llama3", 0, "trained '<|begin_of_text|><|start_header_id|>"),
    "zephyr": Source("zephyr", True, True, "zephyr", 0, "trained '<|system|>"),
    "fallback": Source("auto", False, True, "chatml", 0, NO_TEMPLATE),
    "plain": Source("auto", False, False, "none", 0, NO_TEMPLATE),
}


def write_rows(directory: Path, train: list[dict[str, Any]], validation: list[dict[str, Any]]) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = directory / "train.jsonl", directory / "validation.jsonl"
    for path, rows in zip(paths, (train, validation), strict=True):
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return paths


@dataclass
class Trained:
    """What the driver has after data preparation: the tokenizer, held-out samples, stop tokens and the template."""

    tokenizer: Any
    samples: list[ServingSample]
    stop_token_ids: list[int]
    chat_template: str | None
    trained_as: str


def prepare(tokenizer: Any, setting: str, train: Path, validation: Path) -> Trained:
    """Run the data pipeline and take the held-out samples as the driver would."""
    # maxSeqLength: "auto" takes the training rows' lengths, which would cut the longer held-out prompts here.
    spec = DatasetSpec.model_validate({"train": {"uri": str(train)}, "validation": {"uri": str(validation)},
                                       "chatTemplate": setting, "maxSeqLength": MAX_SEQ_LENGTH})
    prepared = analyze(spec, tokenizer, read_dataset(str(train)), read_dataset(str(validation)))
    assert not prepared.report.errors, prepared.report.errors
    _, conversations, _ = convert_rows(read_dataset(str(validation)).rows, "auto", {}, str(validation))
    by_line = {c.line: c for c in conversations}
    # A truncated example's prompt lost its start: no server sees it. Shorter than maxSeqLength, none was cut.
    samples = [serving_sample(by_line[e.line], e.prompt_ids) for e in prepared.validation
               if len(e.input_ids) < prepared.max_seq_length]
    assert len(samples) == len(by_line)
    # The kind from what PreparedData reports (see export_chat_template).
    kind = "prompt_completion" if prepared.chat_template == "none" else "chat"
    return Trained(tokenizer, samples, prepared.stop_token_ids, export_chat_template(setting, tokenizer, kind),
                   prepared.chat_template)


@pytest.fixture(scope="module")
def base_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with Llama 3's special tokens, `</s>` as EOS, SmolLM2's template, and a zeroed final norm."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("served-base")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.add_tokens(EXTRA_TOKENS, special_tokens=True)
    tokenizer.bos_token, tokenizer.eos_token = "<|begin_of_text|>", "</s>"
    tokenizer.chat_template = OWN_TEMPLATE
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.resize_token_embeddings(len(tokenizer))
    with torch.no_grad():
        model.model.norm.weight.zero_()  # every logit 0: greedy picks token 0, <|endoftext|>
    for config in (model.config, model.generation_config):
        config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def export(base: Path, out: Path, source: Source, prepared: bool) -> Trained:
    """Prepare data for `source` on the base, then save the model and tokenizer as the worker does."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    if not source.own_template:
        tokenizer.chat_template = None
    train, validation = write_rows(out / "data", *((CHAT_TRAIN, CHAT_VALIDATION) if source.chat else
                                                   (PC_TRAIN, PC_VALIDATION)))
    trained = prepare(tokenizer, source.setting, train, validation)
    model = AutoModelForCausalLM.from_pretrained(base)
    if prepared:
        prepare_for_export(model, tokenizer, trained.chat_template, trained.stop_token_ids)
    model.save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "model")
    return trained


def token_id(tokenizer: Any, token: str) -> int:
    return int(tokenizer.convert_tokens_to_ids(token))


@pytest.mark.parametrize("name", list(SOURCES))
def test_a_prepared_export_serves_every_held_out_prompt_as_trained_and_stops(base_dir: Path, tmp_path: Path,
                                                                              name: str) -> None:
    source = SOURCES[name]
    trained = export(base_dir, tmp_path, source, prepared=True)
    tokenizer = trained.tokenizer
    assert trained.trained_as == source.trained_as
    eos, end_of_text = token_id(tokenizer, "</s>"), token_id(tokenizer, "<|endoftext|>")
    assert trained.stop_token_ids[0] == eos and end_of_text in trained.stop_token_ids
    saved = json.loads((tmp_path / "model" / "generation_config.json").read_text())
    assert saved["eos_token_id"] == trained.stop_token_ids
    assert saved["pad_token_id"] == token_id(tokenizer, "<|pad|>")
    check = serving_check(tmp_path / "model", trained.samples, MAX_NEW_TOKENS,
                          stop_token_ids=trained.stop_token_ids)
    assert check == ServingCheck(prompts=3, template_matches=3, stops=3)
    assert check.passed


@pytest.mark.parametrize("name", list(SOURCES))
def test_an_export_without_the_trained_template_or_stop_tokens_fails_the_check(base_dir: Path, tmp_path: Path,
                                                                               name: str) -> None:
    source = SOURCES[name]
    trained = export(base_dir, tmp_path, source, prepared=False)
    check = serving_check(tmp_path / "model", trained.samples, MAX_NEW_TOKENS,
                          stop_token_ids=trained.stop_token_ids)
    assert not check.passed
    assert (check.prompts, check.template_matches, check.stops) == (3, source.unprepared_matches, 0)
    # The base generation config stops on EOS only: every end-of-turn token of training is missing.
    assert check.missing_stop_ids == tuple(trained.stop_token_ids[1:])
    assert token_id(trained.tokenizer, "<|endoftext|>") in check.missing_stop_ids
    assert check.first_no_stop is not None and "4 new tokens: '<|endoftext|>" in check.first_no_stop
    if source.unprepared_diff is None:
        assert check.first_mismatch is None
    else:
        assert check.first_mismatch is not None and source.unprepared_diff in check.first_mismatch


def test_the_exported_template_is_the_trained_one_for_each_source(base_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    assert export_chat_template("auto", tokenizer, "chat") == OWN_TEMPLATE
    assert export_chat_template(INLINE, tokenizer, "chat") == INLINE
    for name in ("chatml", "llama3", "zephyr"):
        assert export_chat_template(name, tokenizer, "chat") == named_template_jinja(name)
    assert export_chat_template("none", tokenizer, "chat") == PLAIN_JINJA
    assert export_chat_template("chatml", tokenizer, "text") is None  # plain text rows: no template applies
    tokenizer.chat_template = None
    assert export_chat_template("auto", tokenizer, "chat") == named_template_jinja("chatml")
    assert export_chat_template("auto", tokenizer, "prompt_completion") == PLAIN_JINJA


def test_prepare_keeps_the_configs_own_stop_tokens_and_several_named_templates(base_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    model.generation_config.eos_token_id = [7, 9]
    model.generation_config.pad_token_id = None
    tokenizer.chat_template = {"default": OWN_TEMPLATE, "tool_use": INLINE}
    prepare_for_export(model, tokenizer, OWN_TEMPLATE, [9, 3, 3, 5])
    assert model.generation_config.eos_token_id == [9, 3, 5, 7]  # trained order first, deduplicated
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id
    assert tokenizer.chat_template == {"default": OWN_TEMPLATE, "tool_use": INLINE}
    prepare_for_export(model, tokenizer, None, [])
    assert model.generation_config.eos_token_id == [9, 3, 5, 7]
    assert tokenizer.chat_template == {"default": OWN_TEMPLATE, "tool_use": INLINE}
    prepare_for_export(model, tokenizer, INLINE, [])
    assert tokenizer.chat_template == INLINE


def test_an_adapter_directory_carries_the_template_and_the_stop_tokens(base_dir: Path, tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    trained = prepare(tokenizer, "chatml", *write_rows(tmp_path / "data", CHAT_TRAIN, CHAT_VALIDATION))
    model: Any = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), LoraConfig(r=4, lora_alpha=8))
    prepare_for_export(model, tokenizer, trained.chat_template, trained.stop_token_ids)
    assert model.get_base_model().generation_config.eos_token_id == trained.stop_token_ids
    adapter = tmp_path / "adapter"
    model.save_pretrained(adapter)
    tokenizer.save_pretrained(adapter)
    # PEFT saves no generation config: served like this, base + adapter never stop on the end-of-turn tokens.
    assert not (adapter / "generation_config.json").exists()
    check = serving_check(adapter, trained.samples, MAX_NEW_TOKENS, base_dir, stop_token_ids=trained.stop_token_ids)
    assert (check.template_matches, check.stops, check.passed) == (3, 0, False)
    write_generation_config(model, adapter)
    check = serving_check(adapter, trained.samples, MAX_NEW_TOKENS, base_dir, stop_token_ids=trained.stop_token_ids)
    assert check == ServingCheck(prompts=3, template_matches=3, stops=3) and check.passed
    merged = tmp_path / "merged"
    model.merge_and_unload().save_pretrained(merged)  # the merged model keeps the prepared generation config
    tokenizer.save_pretrained(merged)
    assert serving_check(merged, trained.samples, MAX_NEW_TOKENS, stop_token_ids=trained.stop_token_ids).passed


def test_the_check_takes_at_most_eight_prompts_and_reports_in_camel_case(base_dir: Path, tmp_path: Path) -> None:
    trained = export(base_dir, tmp_path, SOURCES["fallback"], prepared=False)
    samples = [ServingSample(trained.samples[i % 3].messages, trained.samples[i % 3].prompt_ids) for i in range(10)]
    check = serving_check(tmp_path / "model", samples, 2, stop_token_ids=trained.stop_token_ids)
    assert check.prompts == MAX_PROMPTS == 8
    wire = check.to_wire()
    assert wire == {"passed": False, "prompts": 8, "templateMatches": 0, "stops": 0,
                    "missingStopIds": list(trained.stop_token_ids[1:]), "firstMismatch": check.first_mismatch,
                    "firstNoStop": check.first_no_stop}
    assert wire["firstMismatch"].startswith("prompt 0: ValueError:")
    assert wire["firstNoStop"].startswith("prompt 0: no stop token [")
    assert not ServingCheck(prompts=0, template_matches=0, stops=0).passed  # nothing checked is no pass


def test_a_served_prompt_that_differs_is_shown_where_it_differs(base_dir: Path, tmp_path: Path) -> None:
    trained = export(base_dir, tmp_path, SOURCES["chatml"], prepared=True)
    sample = trained.samples[1]
    changed = ServingSample(sample.messages, [*sample.prompt_ids[:-3], 5, *sample.prompt_ids[-2:]])
    check = serving_check(tmp_path / "model", [sample, changed], 1)
    assert (check.prompts, check.template_matches) == (2, 1)
    at = len(sample.prompt_ids) - 3
    assert check.first_mismatch is not None
    assert check.first_mismatch.startswith(f"prompt 1: the served prompt ({len(sample.prompt_ids)} tokens) differs "
                                           f"from the trained one ({len(sample.prompt_ids)} tokens) at token {at}")
    assert "served 'assistant\\n'" in check.first_mismatch


def test_a_conversation_without_an_answer_has_no_prompt_to_serve() -> None:
    from sftjob_trainer.data.conversation import Conversation, Message

    with pytest.raises(ValueError, match="line 7: a conversation without an assistant turn"):
        serving_sample(Conversation((Message("text", "plain"),), "text", 7), [1])


@pytest.fixture(scope="module")
def smollm2_export(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Trained]:
    """SmolLM2-135M-Instruct exported as the worker does, with its own template (the `auto` default)."""
    from transformers import AutoModelForCausalLM

    from sftjob_trainer.model_loading import load_tokenizer

    out = tmp_path_factory.mktemp("smollm2-export")
    tokenizer = load_tokenizer(smollm2_dir, ModelSpec(source=str(smollm2_dir)))
    trained = prepare(tokenizer, "auto", *write_rows(out / "data", CHAT_TRAIN, CHAT_VALIDATION))
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir)
    prepare_for_export(model, tokenizer, trained.chat_template, trained.stop_token_ids)
    model.save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "model")
    return out / "model", trained


SMOLLM2_NEW_TOKENS = 16


def test_smollm2_exported_as_trained_stops_on_every_held_out_prompt(smollm2_export: tuple[Path, Trained]) -> None:
    directory, trained = smollm2_export
    im_end = token_id(trained.tokenizer, "<|im_end|>")
    assert trained.trained_as == "tokenizer" and trained.stop_token_ids[0] == im_end
    check = serving_check(directory, trained.samples, SMOLLM2_NEW_TOKENS, stop_token_ids=trained.stop_token_ids)
    assert check == ServingCheck(prompts=3, template_matches=3, stops=3) and check.passed


def test_smollm2_without_its_end_of_turn_stop_token_never_stops(smollm2_export: tuple[Path, Trained],
                                                                 tmp_path: Path) -> None:
    # The common complaint: the config stops on a base EOS (<|endoftext|>) the chat model never writes.
    directory, trained = smollm2_export
    broken = tmp_path / "model"
    broken.mkdir()
    for item in directory.iterdir():
        (broken / item.name).symlink_to(item)
    (broken / "generation_config.json").unlink()
    shutil.copy(directory / "generation_config.json", broken / "generation_config.json")
    config = json.loads((broken / "generation_config.json").read_text())
    config["eos_token_id"] = [token_id(trained.tokenizer, "<|endoftext|>")]
    (broken / "generation_config.json").write_text(json.dumps(config))
    check = serving_check(broken, trained.samples, SMOLLM2_NEW_TOKENS, stop_token_ids=trained.stop_token_ids)
    im_end = token_id(trained.tokenizer, "<|im_end|>")
    assert (check.prompts, check.template_matches, check.stops) == (3, 3, 0)
    assert check.missing_stop_ids == (im_end,) and not check.passed
    assert check.first_no_stop is not None and "<|im_end|>" in check.first_no_stop
