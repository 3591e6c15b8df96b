# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --disable-pip-version-check -q -c constraints.txt
THREADS ?= 2

.PHONY: demo test test-slow lint bench bench-minnorm bench-autoattack bench-blackbox bench-universal bench-store bench-certify bench-train bench-defenses clean

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
	OMP_NUM_THREADS=$(THREADS) $(BIN)/advex evaluate --out runs/demo --overwrite

lint: $(VENV)/.dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

# The report test renders a report in headless Chromium (Debian's chromium package).
$(VENV)/.browser: | $(BIN)/python
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); command -v apt-get >/dev/null 2>&1 && \
	    $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    $$SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null; } || \
	  echo "note: chromium could not be installed; the browser test of the report will skip"
	touch $@

test: lint $(VENV)/.browser
	OMP_NUM_THREADS=$(THREADS) $(BIN)/python -m pytest

test-slow: $(VENV)/.dev
	OMP_NUM_THREADS=$(THREADS) $(BIN)/python -m pytest -m slow

bench: $(VENV)/.bench
	OMP_NUM_THREADS=$(THREADS) $(BIN)/python benchmarks/pgd_speed.py

bench-minnorm: $(VENV)/.bench
	OMP_NUM_THREADS=$(THREADS) $(BIN)/python benchmarks/minnorm.py

bench-autoattack: $(VENV)/.bench
	OMP_NUM_THREADS=$(THREADS) $(BIN)/python benchmarks/autoattack.py --checks

bench-store: $(VENV)/.base
	OMP_NUM_THREADS=$(THREADS) $(BIN)/python benchmarks/store_overhead.py --threads $(THREADS)

bench-universal: $(VENV)/.bench
	OMP_NUM_THREADS=$(THREADS) $(BIN)/python benchmarks/universal.py --threads $(THREADS)

# Certification needs the verify extra (HiGHS); no peer library is involved.
$(VENV)/.verify: $(VENV)/.base
	$(PIP) -e ".[verify]"
	touch $@

bench-certify: $(VENV)/.verify
	OMP_NUM_THREADS=$(THREADS) $(BIN)/python benchmarks/certify.py

# Defenses: advex's training loop against a plain PyTorch loop; the table of every defense.
bench-train: $(VENV)/.base
	OMP_NUM_THREADS=$(THREADS) $(BIN)/python benchmarks/train_speed.py --threads $(THREADS)

bench-defenses: $(VENV)/.base
	OMP_NUM_THREADS=$(THREADS) $(BIN)/python benchmarks/defenses.py --threads $(THREADS)

bench-blackbox: $(VENV)/.bench
	OMP_NUM_THREADS=$(THREADS) $(BIN)/python benchmarks/blackbox.py --threads $(THREADS)

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
