# tiercel developer entry points. `make test` and `make demo` set everything up on a fresh machine.
#
# TORCH_SPEC picks the PyTorch build. The default is the CPU build; on a GPU machine use e.g.
#   make test TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
PYTHON     ?= python3
VENV       ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY          = $(VENV)/bin/python
STAMP       = $(VENV)/.tiercel-installed

.PHONY: setup test test-fast lint lint-fix demo clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[all,dev]'
	touch $(STAMP)

# The suite runs in TEST_WORKERS processes (pytest-xdist), a test file to each, and torch in each on one thread:
# most tests are Python overhead on tiny models, which one process leaves on a single core (timings: 636ae71).
TEST_WORKERS ?= 2

test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=10 tests

lint: $(STAMP)
	$(VENV)/bin/ruff check tiercel tests benchmarks

lint-fix: $(STAMP)
	$(VENV)/bin/ruff check --fix tiercel tests benchmarks

test-fast: $(STAMP)
	$(PY) -m pytest -q tests/unit

demo: $(STAMP)
	$(VENV)/bin/tiercel demo --out demo_out

clean:
	rm -rf $(VENV) demo_out .pytest_cache
