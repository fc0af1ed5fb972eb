# memsvc: `make run` serves the API on the in-memory store, `make test` runs everything CI runs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install run test lint typecheck pytest all clean bench bench-tools load soak

help: ## show this help
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,chroma]'
	touch $@

install: $(STAMP) ## create .venv and install memsvc with its test tools

run: $(STAMP) ## serve the API on http://127.0.0.1:8080 (in-memory store unless MEMORY_TYPE says otherwise)
	$(BIN)/memsvc serve

lint: $(STAMP) ## ruff: lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP) ## mypy --strict
	$(BIN)/mypy

pytest: $(STAMP) ## the test suite alone
	$(BIN)/pytest -q

test: lint typecheck pytest ## lint, typecheck and the whole test suite (what CI runs)

all: test ## everything CI checks

BENCH_STAMP := $(VENV)/.bench-installed
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	touch $@

bench-tools:
	@for tool in wrk redis-server; do command -v $$tool >/dev/null 2>&1 && continue; \
	    echo "$$tool not on PATH; installing it with apt-get"; $(SUDO) apt-get update -qq; \
	    DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$tool; done

bench: $(BENCH_STAMP) bench-tools ## memsvc against a bare-aiohttp ceiling with wrk (~12 min; bench/results/)
	$(BIN)/python -m bench $(BENCH_ARGS)

load: $(BENCH_STAMP) bench-tools ## locust for 60 s against a memsvc it starts (LOAD_ARGS='--memory-type redis')
	$(BIN)/python -m bench.load $(LOAD_ARGS)

SOAK_SECONDS ?= 60
soak: $(STAMP) ## two replicas on one Redis under load through a Redis restart and a replica restart; prints the counts
	$(BIN)/python -m tests.soak --seconds $(SOAK_SECONDS)

clean: ## remove the virtualenv and caches
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
