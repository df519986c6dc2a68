# Two commands on a fresh machine: `make run` and `make test`.
PY      ?= python3.11
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
# postgres tests run when PostgreSQL is installed (they start their own server) and skip with the reason otherwise
PYTEST_MARKERS ?= not slow and not docker and not cuda and not tensorrt and not jetson

.PHONY: run test lint test-slow test-docker bench clean venv

$(STAMP): pyproject.toml
	@command -v $(PY) >/dev/null 2>&1 || { echo "error: $(PY) not found (hint: install Python 3.11 or run make PY=python3)"; exit 2; }
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	@rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP)

## make run: set up and run the embedded default (ResNet-20 on digits, cpu target, 2x speedup, <=1 pt drop)
run: $(STAMP)
	$(BIN)/pipeline run

## make lint: the layer contract (import-linter: no upward import, no cycle) and ruff (pyflakes, isort, bugbear, complexity)
lint: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/ruff check .

## make test: set up, lint, and run the default test suite (no GPU, no Docker, no PostgreSQL needed)
test: lint
	$(BIN)/python -m pytest -q -m "$(PYTEST_MARKERS)"

## make test-slow: the long tests too (several minutes)
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m "not docker and not cuda and not tensorrt and not jetson"

## make test-docker: build the Docker image (local debootstrap base, private dockerd; needs root) and run it (~5 min cold, ~1.2 min warm)
test-docker: $(STAMP)
	docker/install-deps.sh
	$(BIN)/python -m pytest -q -m docker tests/docker

## make bench: the benchmarks in bench/ (writes bench/results/*.json and *.md)
bench: $(STAMP)
	$(BIN)/python bench/speedup_realization.py

clean:
	rm -rf $(VENV) runs .pytest_cache
