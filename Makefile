# icx: `make demo` and `make test` are the two commands; each sets itself up.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP := $(VENV)/.installed
PROTOS := $(wildcard proto/icx/v1/*.proto)
SRCS := core identity broker node_agent matcher ledger client cli peering dashboard tests bench

.PHONY: help setup demo test check lint fmt typecheck proto proto-check bench lock clean

help:
	@echo "make demo        run the federation demo (17 centers, 200+ jobs)"
	@echo "make test        lint, proto-check and the test suite"
	@echo "make proto       regenerate icx/v1 from proto/"
	@echo "make proto-check fail when icx/v1 is stale"
	@echo "make lint        ruff and buf lint"
	@echo "make typecheck   mypy --strict"
	@echo "make bench       run the benchmarks"

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c requirements.lock -e '.[dev]'
	$(PY) -m dashboard.assets  # ECharts for the dashboard, from npm, integrity checked
	touch $@

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/icx demo

# A test file per worker, TEST_WORKERS at a time: the tests mostly wait on the processes
# and daemons they start, so two workers on two cores halve the time.
TEST_WORKERS ?= 2

test: $(STAMP) lint typecheck proto-check
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=25 tests

check: test typecheck

lint: $(STAMP)
	$(BIN)/ruff format --check $(SRCS)
	$(BIN)/ruff check $(SRCS)
	cd proto && ../$(BIN)/buf lint

fmt: $(STAMP)
	$(BIN)/ruff format $(SRCS)
	$(BIN)/ruff check --fix $(SRCS)

typecheck: $(STAMP)
	$(BIN)/mypy core identity broker node_agent matcher ledger client cli peering scenario dashboard

# The generated code comes from the pinned grpcio-tools (protoc 31.1), whose output
# the pinned protobuf runtime (6.33) accepts.
proto: $(STAMP)
	rm -f icx/v1/*_pb2*.py icx/v1/*_pb2*.pyi
	$(PY) -m grpc_tools.protoc -I proto --python_out=. --pyi_out=. --grpc_python_out=. $(PROTOS)

proto-check: $(STAMP)
	rm -rf build/proto-check && mkdir -p build/proto-check
	$(PY) -m grpc_tools.protoc -I proto --python_out=build/proto-check --pyi_out=build/proto-check --grpc_python_out=build/proto-check $(PROTOS)
	diff -r -x __init__.py -x __pycache__ build/proto-check/icx/v1 icx/v1 || (echo "icx/v1 is stale: run 'make proto'" >&2; exit 1)
	cd proto && ../$(BIN)/buf lint

bench: $(STAMP)
	$(PY) -m bench

lock:
	rm -rf build/lock && $(PYTHON) -m venv build/lock
	build/lock/bin/pip install -q -e '.[dev]'
	(echo "# Every transitive dependency, pinned: installed with 'pip install -c requirements.lock -e .[dev]'."; \
	 echo "# Regenerate with 'make lock' after changing pyproject.toml."; \
	 build/lock/bin/pip freeze --exclude-editable) > requirements.lock

clean:
	rm -rf build $(VENV) .pytest_cache .mypy_cache .ruff_cache
