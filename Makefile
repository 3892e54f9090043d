# Two commands matter: `make run` (serve the API with its local workers) and `make test` (lint + tests).
# Both install what is missing first: `make run` only what serving needs, `make test` (and
# `make install`) also the development tools and Chromium. Every step says what it does first.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Redone when pyproject.toml changes: the serving install, then the development extra on top.
SERVE_STAMP := $(VENV)/.installed-serve
DEV_STAMP   := $(VENV)/.installed-dev
# pip's normal output (what it collects and installs), without progress bars that clutter logs.
PIP_INSTALL := $(BIN)/pip install --progress-bar off
# Options for `mbpo serve`, e.g. make run SERVE_ARGS="--host 0.0.0.0 --port 9000"
SERVE_ARGS ?=
# One-line notes before each step, prefixed with the command that was asked for ("[make run]").
TAG = [make $(or $(MAKECMDGOALS),$(.DEFAULT_GOAL))]
SAY = @echo "$(TAG)"

.PHONY: install install-serve chromium run demo test lint lmms-eval

# Everything for development: `make test`, `make lint`, `.ci/run`.
install: install-serve $(DEV_STAMP) chromium

# Only what `mbpo serve` needs (`make run`): no test, lint or browser tools.
install-serve: $(SERVE_STAMP)

# torch==2.13.0 first and exactly: the CPU wheel on this machine. Letting the resolver pick torch
# would download a multi-GB CUDA build.
$(SERVE_STAMP): pyproject.toml
	@test -x $(BIN)/python || { \
	  echo "$(TAG) creating the virtual environment $(VENV) ..." && \
	  $(PYTHON) -m venv $(VENV); }
	$(SAY) installing torch 2.13.0 "(CPU wheel)" into $(VENV) ...
	@$(PIP_INSTALL) "torch==2.13.0"
	$(SAY) installing mbpo and its serving dependencies into $(VENV) "(pip install -e .)" ...
	@$(PIP_INSTALL) -e .
	@touch $@

$(DEV_STAMP): $(SERVE_STAMP) pyproject.toml
	$(SAY) installing the development tools: pytest, ruff, mypy, import-linter, playwright \
	  "(pip install -e '.[dev]')" ...
	@$(PIP_INSTALL) -e '.[dev]'
	@touch $@

# Debian's Chromium for the browser tests of the admin UI; skipped when present, a warning (not a
# failure) where apt-get is unavailable.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "$(TAG) installing Debian's chromium for the browser tests (apt-get) ..."; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  { $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver; } \
	  || echo "warning: could not install chromium (browser tests will not run)"; }

# The demo: the quick testbed (datasets + a small VLM that sees and hallucinates), built once
# (a few minutes on a laptop CPU) and reused; `mbpo serve --demo` registers it for the dev admin.
# The build prints its phases, then steps done/total with an ETA every few seconds.
DEMO_TESTBED ?= .mbpo/demo-testbed
demo: install-serve
	@if test -f $(DEMO_TESTBED)/build_report.json; then \
	  echo "$(TAG) demo testbed: reusing $(DEMO_TESTBED)"; \
	else \
	  echo "$(TAG) building the demo testbed into $(DEMO_TESTBED)" \
	    "(once; a few minutes on a CPU): mbpo testbed build --quick ..." && \
	  rm -rf $(DEMO_TESTBED).building && \
	  $(BIN)/mbpo testbed build --quick --out $(DEMO_TESTBED).building && \
	  mv $(DEMO_TESTBED).building $(DEMO_TESTBED); \
	fi

# Server directories clients may register datasets and models from (override to add your own).
# PYTHONUNBUFFERED: every line reaches a log file or pipe at once, not when a buffer fills.
run: export MBPO_DATA_ROOTS ?= $(CURDIR)/examples
run: export PYTHONUNBUFFERED = 1
run: install-serve demo
	$(SAY) starting the service "(mbpo serve --demo $(DEMO_TESTBED) $(SERVE_ARGS))": it prints its URL, \
	  the development admin key and a demo command to launch a run. Ctrl-C stops it.
	@$(BIN)/mbpo serve --demo $(DEMO_TESTBED) $(SERVE_ARGS)

# LMMS-Eval for `mbpo eval lmms-task` and its test (docs/benchmarks.md, "LMMS-Eval"), in a virtual
# environment of its own: its full dependency set would replace our torch (its torchvision pulls
# a multi-GB CUDA torch). lmms-eval itself without dependencies, then the CPU torch and only what
# its command line, its OpenAI-compatible model and local tasks import. filelock < 4: lmms-eval
# 0.7.3 patches `filelock._api`, which filelock 4 no longer has ("No module named 'filelock._api'").
LMMS_VENV  := .venv-lmms
LMMS_EVAL  := lmms-eval==0.7.3
LMMS_DEPS  := "filelock<4" accelerate datasets evaluate jsonlines loguru openai pillow pytablewriter \
              python-dotenv sacrebleu tenacity transformers
LMMS_STAMP := $(LMMS_VENV)/.installed-$(LMMS_EVAL)

lmms-eval: $(LMMS_STAMP)

$(LMMS_STAMP):
	$(SAY) installing $(LMMS_EVAL) into its own environment $(LMMS_VENV) "(CPU torch, no optional extras)" ...
	@rm -rf $(LMMS_VENV) && $(PYTHON) -m venv $(LMMS_VENV)
	@$(LMMS_VENV)/bin/pip install --progress-bar off "torch==2.13.0"
	@$(LMMS_VENV)/bin/pip install --progress-bar off $(LMMS_DEPS)
	@$(LMMS_VENV)/bin/pip install --progress-bar off --no-deps "$(LMMS_EVAL)"
	@touch $@

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint lmms-eval
	$(BIN)/pytest tests
