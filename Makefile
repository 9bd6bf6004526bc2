# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create the virtual environment they need; torch is pinned to the CPU build.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_PIN := torch==2.13.0
DEMO_DIR ?= demo-run
export DEBIASKIT_DATA ?= $(CURDIR)/data-cache

DOCS_STAMP := $(VENV)/.docs-installed

.PHONY: demo test test-fast lint venv docs clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_PIN)
	$(BIN)/pip install --quiet -e '.[dev]' $(TORCH_PIN)
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/debiaskit data prepare mnist
	$(BIN)/debiaskit train --dataset biased-mnist --rho 0.99 --model simple-conv-small \
		--epochs 6 --seed 0 --out $(DEMO_DIR)/vanilla --force
	$(BIN)/debiaskit audit $(DEMO_DIR)/vanilla
	$(BIN)/debiaskit ffw $(DEMO_DIR)/vanilla --mode unstructured --out $(DEMO_DIR)/ffw --force
	@echo "Audit report: $(DEMO_DIR)/vanilla/audit/report.md (JSON: audit.json, plots: *.png)"
	@echo "FFW report:   $(DEMO_DIR)/ffw/report.md (pruned model: model.safetensors, masks: masks.safetensors)"

# `make test` (CI) runs the static checks (tools/lint.sh), then every test (it fails when either fails): the tests marked slow (the same checks on
# more methods or larger data) add about 30 s of CPU. `make test-fast` leaves them out while developing.
test: $(STAMP)
	PYTHON=$(BIN)/python tools/lint.sh; lint=$$?; \
	$(BIN)/python -m pytest -q -n 2 --dist loadfile tests && exit $$lint

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m "not slow" tests

# ruff (format check, lint) and mypy: docs/design/static-checks.md. `make lint FIX=1` applies the automatic fixes first.
lint: $(STAMP)
	PYTHON=$(BIN)/python tools/lint.sh $(if $(FIX),--fix)

# The documentation site into ./site (mkdocs.yml); warnings are errors. The API reference is read from the source
# (no torch import), the CLI reference from the typer app.
$(DOCS_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[docs]' $(TORCH_PIN)
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	$(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) $(DEMO_DIR) site
