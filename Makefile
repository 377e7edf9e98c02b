# The README and CI call these targets; each one creates the venv it needs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# The loadtest extra (`emailq loadtest`) is the emailq-loadtest distribution in ./loadtest:
# given on the same line, pip takes it from there instead of looking for it on an index.
$(STAMP): pyproject.toml loadtest/pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ./loadtest -e '.[dev,loadtest]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/emailq demo

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks loadtest/src
	$(BIN)/ruff format --check src tests benchmarks loadtest/src
	$(BIN)/mypy
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks loadtest/src
	$(BIN)/ruff format --check src tests benchmarks loadtest/src
	$(BIN)/mypy

# The peers' packages (Celery) come with the bench extra; e2e.py builds arq's own venv.
BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): pyproject.toml loadtest/pyproject.toml | $(STAMP)
	$(BIN)/pip install --quiet -e ./loadtest -e '.[dev,bench,loadtest]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python benchmarks/broker.py
	$(BIN)/python benchmarks/api.py
	$(BIN)/python benchmarks/e2e.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
