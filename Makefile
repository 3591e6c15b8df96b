# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --disable-pip-version-check -q -c constraints.txt
THREADS ?= 2

.PHONY: demo test test-slow lint bench bench-minnorm bench-autoattack bench-blackbox clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch first and pinned, so that no other package can pull another build of it.
$(VENV)/.base: $(BIN)/python pyproject.toml constraints.txt
	$(PIP) torch==2.13.0
	$(PIP) -e .
	touch $@

$(VENV)/.dev: $(VENV)/.base
	$(PIP) -e ".[dev]"
	touch $@

$(VENV)/.bench: $(VENV)/.base benchmarks/constraints.txt
	$(PIP) -c benchmarks/constraints.txt foolbox adversarial-robustness-toolbox
	$(PIP) -c benchmarks/constraints.txt --no-deps torchattacks
	touch $@

demo: $(VENV)/.base
	OMP_NUM_THREADS=$(THREADS) $(BIN)/advex evaluate --out runs/demo

lint: $(VENV)/.dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

test: lint
	OMP_NUM_THREADS=$(THREADS) $(BIN)/python -m pytest

test-slow: $(VENV)/.dev
	OMP_NUM_THREADS=$(THREADS) $(BIN)/python -m pytest -m slow

bench: $(VENV)/.bench
	OMP_NUM_THREADS=$(THREADS) $(BIN)/python benchmarks/pgd_speed.py

bench-minnorm: $(VENV)/.bench
	OMP_NUM_THREADS=$(THREADS) $(BIN)/python benchmarks/minnorm.py

bench-autoattack: $(VENV)/.bench
	OMP_NUM_THREADS=$(THREADS) $(BIN)/python benchmarks/autoattack.py --checks

bench-blackbox: $(VENV)/.bench
	OMP_NUM_THREADS=$(THREADS) $(BIN)/python benchmarks/blackbox.py --threads $(THREADS)

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
