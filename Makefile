# mlnb: `make demo` runs the demo project, `make test` runs every test.
# Each target bootstraps .venv on first use and again whenever pyproject.toml changes.
SHELL := /bin/bash
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export BENTOML_DO_NOT_TRACK := true
export GX_ANALYTICS_ENABLED := false
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: demo test check-export nbtest pytest bench docs clean-notebooks export

$(STAMP): pyproject.toml
	@echo "== setting up $(VENV) (first run, or pyproject.toml changed)"
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade uv
	@$(BIN)/uv pip install -q --python $(BIN)/python -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/mlnb demo

test: $(STAMP) check-export nbtest pytest

# mlnb/ is generated from nbs/: fail when nbdev-export would change it.
check-export: $(STAMP)
	@before=$$(find mlnb -name '*.py' | sort | xargs sha256sum); \
	$(BIN)/nbdev-export; \
	after=$$(find mlnb -name '*.py' | sort | xargs sha256sum); \
	if [ "$$before" != "$$after" ]; then \
	  echo "mlnb/ disagrees with nbs/: nbdev-export changed it (commit nbs/ and mlnb/ together)"; \
	  diff <(echo "$$before") <(echo "$$after"); exit 1; fi; \
	echo "== mlnb/ matches nbs/"

nbtest: $(STAMP)
	$(BIN)/nbdev-test --n-workers 2 --timing

pytest: $(STAMP)
	$(BIN)/pytest -q -ra

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

export: $(STAMP)
	$(BIN)/nbdev-export && $(BIN)/nbdev-clean
