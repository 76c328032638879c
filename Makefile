# Every target works on a fresh machine: `make test` installs what it needs first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is pinned in every pip call: an unpinned torch pulls a multi-GB CUDA build.
TORCH := torch==2.13.0

.PHONY: install test lint crd docs demo

$(BIN)/sftjob: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)" -e ".[operator,trainer,dev]"
	touch $(BIN)/sftjob

install: $(BIN)/sftjob

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

crd: install
	$(BIN)/sftjob crd > crds/sftjob.yaml

docs: install
	$(BIN)/sftjob reference > docs/sftjob-reference.md

# The quickstart: a tiny model and a copy-task dataset built under demo/, one `sftjob run` on a local
# Ray cluster (2 CPU workers), then base vs fine-tuned held-out exact match from eval_samples.jsonl.
demo: install
	rm -rf demo
	$(BIN)/python -m sftjob_trainer.demo assets demo
	$(BIN)/sftjob run examples/quickstart.yaml
	$(BIN)/python -m sftjob_trainer.demo report demo/output/quickstart
