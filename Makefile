# Each target creates .venv and installs what it needs, so a fresh machine needs only Python.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo lint test test-dist test-extra test-faults test-all install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/pretrainer demo

# The layer contract (.importlinter) is checked before the tests: a wrong-way import fails fast.
lint: $(STAMP)
	$(VENV)/bin/lint-imports

test: lint
	$(PY) -m pytest -q

# Multi-process torch.distributed tests (gloo, 2 processes on the CPU).
test-dist: $(STAMP)
	$(PY) -m pytest -q -m distributed

# What the default run leaves out, GPU tests aside: multi-process, slow and fault-injection tests.
# CI's second step.
test-extra: $(STAMP)
	$(PY) -m pytest -q -m 'distributed or slow or faults'

# Fault injection alone (SIGKILL mid-save, full disk, NaN loss, a rank killed); prints its figures.
test-faults: $(STAMP)
	$(PY) -m pytest -q -s -m faults tests/faults

# Everything: the default run, multi-process, slow, fault-injection and (on a CUDA machine) GPU tests.
test-all: $(STAMP)
	$(PY) -m pytest -q -m ''

clean:
	rm -rf $(VENV) .pytest_cache
