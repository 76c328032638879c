"""Build a tiny causal LM and a byte-level BPE tokenizer locally, for tests, benches and the demo.

No model hub is reachable on the machines this project is built on, so the real loading paths
(hub ids, s3://, local directories) are exercised with models made here from a config. Nothing
built here is committed: it is rebuilt in seconds.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"]

_WORDS = (
    "the", "a", "an", "of", "to", "in", "is", "it", "you", "that", "he", "was", "for", "on", "are", "as",
    "with", "his", "they", "at", "be", "this", "have", "from", "or", "one", "had", "by", "word", "but", "not",
    "what", "all", "were", "we", "when", "your", "can", "said", "there", "use", "each", "which", "she", "do",
    "how", "their", "if", "will", "up", "other", "about", "out", "many", "then", "them", "these", "so",
    "some", "her", "would", "make", "like", "him", "into", "time", "has", "look", "two", "more", "write",
    "go", "see", "number", "no", "way", "could", "people", "my", "than", "first", "water", "been", "call",
    "who", "oil", "its", "now", "find", "long", "down", "day", "did", "get", "come", "made", "may", "part",
    "question", "answer", "user", "assistant", "system", "hello", "thanks", "please", "yes", "red", "green",
    "blue", "small", "large", "cat", "dog", "bird", "fish", "tree", "house", "car", "road", "city", "river",
    "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "zero",
)


@dataclass(frozen=True)
class TinyModelConfig:
    """Shape of the tiny Llama. The defaults train a few hundred steps/minute on 2 CPU cores."""

    vocab_size: int = 1024
    """BPE vocabulary including the special tokens."""
    hidden_size: int = 64
    """Model width."""
    intermediate_size: int = 128
    """MLP width."""
    num_hidden_layers: int = 2
    """Transformer blocks."""
    num_attention_heads: int = 4
    """Attention heads (head_dim = hidden / heads)."""
    max_position_embeddings: int = 512
    """Longest sequence."""
    seed: int = 0
    """Seed of the weight initialisation."""


def default_corpus(lines: int = 2000, seed: int = 0) -> list[str]:
    """A synthetic English-like corpus with digits and punctuation, to train the tokenizer on."""
    rng = random.Random(seed)  # noqa: S311 - reproducible test text, not security
    out = []
    for _ in range(lines):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 16))]
        out.append(" ".join(words).capitalize() + rng.choice([".", "?", "!", ":", ","]) + f" {rng.randint(0, 999)}")
    return out


def build_tokenizer(out_dir: Path, corpus: Iterable[str] | None = None, vocab_size: int = 1024,
                    chat_template: str | None = None) -> Path:
    """Train a byte-level BPE tokenizer and save it with `save_pretrained`.

    Args:
        out_dir: Directory to write the tokenizer files into.
        corpus: Training text; the default synthetic corpus when None.
        vocab_size: Target vocabulary size including special tokens.
        chat_template: Jinja chat template to store with the tokenizer (None: no template).

    Returns:
        `out_dir`.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
    )
    tokenizer.train_from_iterator(list(corpus) if corpus is not None else default_corpus(), trainer=trainer)
    hf_tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        unk_token=None,
    )
    if chat_template is not None:
        hf_tokenizer.chat_template = chat_template
    out_dir.mkdir(parents=True, exist_ok=True)
    hf_tokenizer.save_pretrained(out_dir)
    return out_dir


def build_tiny_model(out_dir: Path, config: TinyModelConfig | None = None, corpus: Iterable[str] | None = None,
                     chat_template: str | None = None) -> Path:
    """Write a tokenizer and a randomly initialised Llama (safetensors) to `out_dir`.

    Args:
        out_dir: Target directory; `from_pretrained(out_dir)` loads both afterwards.
        config: Model shape; `TinyModelConfig()` when None.
        corpus: Tokenizer training text.
        chat_template: Jinja chat template stored with the tokenizer.

    Returns:
        `out_dir`.
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    config = config or TinyModelConfig()
    build_tokenizer(out_dir, corpus, config.vocab_size, chat_template)
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    llama = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_attention_heads,
        max_position_embeddings=config.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(config.seed)
    model = LlamaForCausalLM(llama)
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir
