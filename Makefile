# The two set-up commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin

.PHONY: demo test lint eval bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

demo: $(BIN)/python
	$(BIN)/python -m pip install --quiet .
	$(BIN)/spkver demo --workdir spkver-demo

test: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/ruff check spkver tests scripts
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

eval: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[plot]'
	$(BIN)/python scripts/evaluate.py

bench: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python scripts/bench_em.py
	$(BIN)/python scripts/bench_score.py
	$(BIN)/python scripts/bench_features.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
