# twinchat: `make compare` runs both servers under the same load and writes a
# report; `make test` runs the test suite. Both bootstrap .venv on a fresh clone.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install venv test lint run-threaded run-async clean

## help: list the targets
help:
	@grep -hE '^## ' $(MAKEFILE_LIST) | sed 's/^## /  /'

## install: create .venv and install twinchat with every extra (tests, load tests)
install: $(STAMP)
venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

## test: run the whole test suite (needs chromium, prometheus, redis-server: see .ci/run)
test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

## lint: ruff check and ruff format --check
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

## run-threaded: the thread-per-connection server, chat on :8001, metrics on :9101
run-threaded: venv
	$(PY) -m threaded_server $(ARGS)

## run-async: the asyncio server, chat on :8002, metrics on :9102
run-async: venv
	$(PY) -m async_server $(ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache

include $(wildcard mk/*.mk)
