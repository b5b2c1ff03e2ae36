# Two entry points (see README): `make quickstart` and `make test`.
# Both create the virtual environment on first use and are no-ops for setup afterwards.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.dlforge-installed

.PHONY: setup quickstart test bench

setup: $(STAMP)

# torch==2.13.0 goes first: asking pip for plain "torch" could pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev,text]"
	$(PY) -m dlforge.data.assets nuclei
	touch $(STAMP)

quickstart: $(STAMP)
	$(VENV)/bin/dlforge quickstart

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/engine_overhead.py
