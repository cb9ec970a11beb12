# Everyday commands. `make run` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-services unit integration integration-rabbitmq4 rabbitmq4 reliability lint typecheck demo bench broker topology clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

broker:
	./scripts/ensure-broker.sh

# RabbitMQ 4.x in a cached Debian 13 chroot on ports 5673/15673 (needs root; scripts/rabbitmq4.sh).
rabbitmq4:
	./scripts/rabbitmq4.sh start

# Redis, PostgreSQL, chromium, the broker's plugins and the RabbitMQ 4 node.
test-services: broker
	./scripts/ensure-test-services.sh

topology: $(STAMP) broker
	$(BIN)/kitty-tasks topology apply

run: $(STAMP) topology
	BIN=$(BIN) ./scripts/run.sh

demo: $(STAMP)
	$(BIN)/python -m kitty_tasks.ops.demo

# Root is needed for the RabbitMQ 4.x chroot; `make unit` and `make integration` need none.
test: $(STAMP) broker test-services
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/pytest
	$(MAKE) integration-rabbitmq4

# The integration suite (without the slow tests) again, on RabbitMQ 4.x with what 4.3 denies
# denied; the tests marked rabbitmq4 (quorum profile, denied features) run only here.
integration-rabbitmq4: $(STAMP) rabbitmq4
	KITTY_TEST_BROKER=rabbitmq4 $(BIN)/pytest tests/integration -m "not slow"

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
