# Everything runs inside .venv, created from this project's own files.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv demo test lint typecheck bench bench-faults clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m pipeline demo

test: $(STAMP)
	$(BIN)/ruff check pipeline tests
	$(BIN)/ruff format --check pipeline tests
	$(BIN)/mypy pipeline
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check pipeline tests
	$(BIN)/ruff format --check pipeline tests

typecheck: $(STAMP)
	$(BIN)/mypy pipeline

bench: $(STAMP)
	$(BIN)/python bench/client_scaling.py

bench-faults: $(STAMP)
	$(BIN)/python bench/fault_suite.py --items 1000

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache
