# wsi-harness: every task a developer or CI runs. `make help` lists them.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
OUT ?= out

.PHONY: help setup demo test lint typecheck unit memory bench-check bench scaling clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,viewers]'
	touch $(STAMP)

setup: $(STAMP)  ## create .venv with the package, dev tools and the napari viewer extra (torch: the CPU wheel on disk)

demo: setup  ## segment a built-in synthetic slide, then a short streaming-vs-dense scaling study
	bash scripts/demo.sh $(OUT)/demo

lint: setup  ## ruff lint + format check
	$(BIN)/ruff check harness tests benchmarks scripts examples
	$(BIN)/ruff format --check harness tests benchmarks scripts examples

typecheck: setup  ## mypy strict on the package
	$(BIN)/mypy

unit: setup  ## the test suite without memory gates
	$(BIN)/pytest -m "not memory" -p no:cacheprovider

memory: setup  ## pytest-memray limit_memory gates and RSS gates
	$(BIN)/pytest --memray -m memory -p no:cacheprovider

bench-check: setup  ## every asv benchmark once at its smallest parameters
	bash scripts/bench_check.sh

test: lint typecheck unit memory bench-check  ## everything CI runs

bench: setup  ## asv benchmarks of the working tree in this environment
	$(BIN)/asv run --python=same --set-commit-hash $$(git rev-parse HEAD)

scaling: setup  ## scaling study 4k..64k (long: about an hour on 2 cores)
	$(BIN)/wsi-harness scaling --sizes 4096,16384,65536 --engine streaming --engine dense \
		--model passthrough --budget 256MB --out $(OUT)/scaling --max-growth 5%

clean:  ## remove outputs and caches (keeps .venv)
	rm -rf $(OUT) .asv/results .asv/html .pytest_cache .mypy_cache .ruff_cache .hypothesis
