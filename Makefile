# Each target creates .venv and installs what it needs, so a fresh machine needs only Python.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo demo-vision fashion-mnist lint test test-dist test-extra test-faults test-all install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/pretrainer demo

# The image demo: scikit-learn's bundled 8x8 digits (in the wheel the test extra installs), SimCLR vs scratch.
demo-vision: $(STAMP)
	$(VENV)/bin/pretrainer demo vision

# Fashion-MNIST's IDX files into data/fashion-mnist (the fmnist configs read it): linked from the Debian
# package dataset-fashion-mnist where installed, else apt-get download + dpkg -x; SHA-256 checked.
fashion-mnist: $(STAMP)
	$(VENV)/bin/pretrainer data fashion-mnist --dir data/fashion-mnist

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
