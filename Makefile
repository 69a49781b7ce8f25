# Two entry points for a fresh machine: `make book` and `make test`.
# Both create (or reuse) a virtual environment in .venv and install the pinned environment.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export TF_CPP_MIN_LOG_LEVEL ?= 3
export TF_ENABLE_ONEDNN_OPTS ?= 0
export MPLBACKEND ?= Agg
export PYDEVD_DISABLE_FILE_VALIDATION ?= 1

.PHONY: book test env chromium clean

env: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 > /dev/null
	touch $(STAMP)

## Build the book into _build/html (notebooks are committed executed; nothing re-runs).
book: $(STAMP)
	$(VENV)/bin/jupyter-book build . -W --keep-going

## Everything CI checks: package and grader tests (every solution at full marks, every exercise
## at zero), strict nbval on every executed chapter and solution, the book build with -W, and the built pages
## rendered in headless Chromium.
test: $(STAMP) chromium
	$(PY) -m pytest tests -q
	$(PY) -m pytest -q --nbval --nbval-current-env --nbval-cell-timeout=600 book solutions
	$(MAKE) book
	$(PY) scripts/check_book_render.py _build/html

## Headless Chromium (Debian's package) for the render check.
chromium:
	@command -v chromium > /dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium > /dev/null; }

clean:
	rm -rf _build
