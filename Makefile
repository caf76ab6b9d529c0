# One command each, from a fresh clone:   make demo   |   make test
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# every test runs one torch thread (tests/conftest.py), so one worker per core, up to 4, uses the machine
PYTEST_WORKERS ?= -n auto --maxprocesses=4 --dist loadfile

.PHONY: setup demo demo-tiny test test-fast lint format clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)  ## create .venv with the pinned dependencies (torch 2.13.0)

demo: setup  ## offline CPU demo: shapes world, its 3 stages (cached in .cache/shapes), adherence report + grid
	HF_HUB_OFFLINE=1 $(BIN)/python demo.py

demo-tiny: setup  ## seconds: the training path on tiny random components + generated Flickr8k-layout data
	HF_HUB_OFFLINE=1 $(BIN)/python train.py experiment=tiny

test: setup  ## the whole suite, offline (what CI runs), on up to 4 worker processes (pytest-xdist)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest $(PYTEST_WORKERS)

test-fast: setup  ## skip the @slow tests
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest $(PYTEST_WORKERS) -m "not slow"

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

clean:
	rm -rf $(VENV) .cache
