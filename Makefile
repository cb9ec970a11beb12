# Everyday commands. `make run` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test unit integration reliability lint typecheck demo bench broker topology clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

broker:
	./scripts/ensure-broker.sh

topology: $(STAMP) broker
	$(BIN)/kitty-tasks topology apply

run: $(STAMP) topology
	BIN=$(BIN) ./scripts/run.sh

demo: $(STAMP)
	$(BIN)/python -m kitty_tasks.ops.demo

test: $(STAMP) broker
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/pytest

unit: $(STAMP)
	$(BIN)/pytest tests/unit

integration: $(STAMP) broker
	$(BIN)/pytest tests/integration

reliability: $(STAMP) broker
	$(BIN)/pytest tests/reliability

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install -q -e '.[bench]'
	touch $(BENCH_STAMP)

# Ratios against raw clients and Dramatiq in the same run; BENCH_ARGS=--quick for development.
bench: $(BENCH_STAMP) broker
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
