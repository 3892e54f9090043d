# Two commands matter: `make run` (serve the API with a local worker) and `make test` (lint + tests).
# Both install what is missing first.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Options for `mbpo serve`, e.g. make run SERVE_ARGS="--host 0.0.0.0 --port 9000"
SERVE_ARGS ?=

.PHONY: install chromium run demo test lint

install: $(STAMP) chromium

# torch==2.13.0 first and exactly: the CPU wheel on this machine. Letting the resolver pick torch
# would download a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Debian's Chromium for the browser tests of the admin UI; skipped when present, a warning (not a
# failure) where apt-get is unavailable.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  { $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver; } \
	  || echo "warning: could not install chromium (browser tests will not run)"; }

# The demo: the quick testbed (datasets + a small VLM that sees and hallucinates), built once
# (a few minutes on a laptop CPU) and reused; `mbpo serve --demo` registers it for the dev admin.
DEMO_TESTBED ?= .mbpo/demo-testbed
demo: install
	@test -f $(DEMO_TESTBED)/build_report.json || { \
	  rm -rf $(DEMO_TESTBED).building && \
	  $(BIN)/mbpo testbed build --quick --out $(DEMO_TESTBED).building && \
	  mv $(DEMO_TESTBED).building $(DEMO_TESTBED); }

# Server directories clients may register datasets and models from (override to add your own).
run: export MBPO_DATA_ROOTS ?= $(CURDIR)/examples
run: install demo
	$(BIN)/mbpo serve --demo $(DEMO_TESTBED) $(SERVE_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint
	$(BIN)/pytest tests
