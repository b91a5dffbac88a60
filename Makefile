# churnml developer commands. `make help` lists them.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help setup run test test-fast lint format bench audit clean

help:  ## Show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): requirements.lock pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), f"churnml needs Python 3.11, found {sys.version.split()[0]}"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip==26.3"
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)  ## Create .venv with the pinned dependencies and churnml installed

run: setup  ## Run the main job on embedded defaults (simulated data)
	$(BIN)/churnml run

test: setup  ## Run the whole test suite (slow tests included)
	$(BIN)/python -m pytest

test-fast: setup  ## Run the tests not marked slow
	$(BIN)/python -m pytest -m "not slow"

lint: setup  ## Lint and format-check
	$(BIN)/ruff check src tests training serving benchmarks
	$(BIN)/ruff format --check src tests training serving benchmarks

format: setup  ## Apply the formatter
	$(BIN)/ruff format src tests training serving benchmarks
	$(BIN)/ruff check --fix src tests training serving benchmarks

bench: setup  ## Run the benchmarks (on demand; prints ratios against an in-run baseline)
	$(BIN)/python benchmarks/bench_simulate.py
	$(BIN)/python benchmarks/bench_features.py
	$(BIN)/python benchmarks/bench_features.py --engines 2000 --months 12
	$(BIN)/python benchmarks/bench_distributed.py
	$(BIN)/python benchmarks/bench_serving.py
	$(BIN)/python benchmarks/bench_training.py
	$(BIN)/python benchmarks/bench_completejourney.py
	$(BIN)/python benchmarks/bench_reasons.py
	$(BIN)/python benchmarks/bench_monitor.py
	$(BIN)/python benchmarks/bench_uplift.py

audit: setup  ## Audit the pinned dependencies for known vulnerabilities (pip-audit; needs PyPI's JSON API)
	$(BIN)/pip-audit -r requirements.lock --no-deps --disable-pip --progress-spinner off

clean:  ## Remove generated data and caches (keeps .venv)
	rm -rf data mlruns mlartifacts mlflow.db optuna.db reports .pytest_cache
