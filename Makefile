# Two commands do all the set-up on a fresh machine with Python 3.11:
#   make run    create .venv, install the serving extra, start the service on the default model
#   make test   create .venv, install serve + dev + train extras, run ruff, mypy and pytest
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 0.0.0.0
PORT ?= 8000

.PHONY: run test lint typecheck pytest bench-extract clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.serve: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[serve]'
	touch $@

$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[serve,dev,train]'
	touch $@ $(VENV)/.serve

run: $(VENV)/.serve
	exec $(BIN)/uvicorn --factory app.main:create_app --host $(HOST) --port $(PORT)

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.dev
	$(BIN)/mypy

pytest: $(VENV)/.dev
	$(BIN)/pytest $(PYTEST_ARGS)

test: lint typecheck pytest

bench-extract: $(VENV)/.dev
	$(BIN)/python bench/extract.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
