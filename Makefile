# Two commands for a fresh machine: `make run` and `make test`. Both (re)create .venv as needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
# Where torch comes from: empty, pip's configured index. PyPI's Linux wheel is the CUDA build;
# TORCH_INDEX=https://download.pytorch.org/whl/cpu takes the far smaller CPU one.
TORCH_INDEX ?=
STAMP  := $(VENV)/.installed

.PHONY: run test setup bench screenshots clean package package-test

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned, so nothing below can pull another build of it.
	$(BIN)/python -m pip install -q "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/glassbox

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/probe_overhead.py
	$(BIN)/python bench/app_throughput.py

screenshots: $(STAMP)
	bash scripts/screenshots.sh

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache

# The one-folder bundle dist/glassbox/ (PyInstaller; see packaging/README.md), and its checks.
package: $(STAMP)
	$(BIN)/python -m pip install -q -e ".[package]"
	$(BIN)/python packaging/build.py

package-test: package
	bash packaging/bundle_test.sh dist/glassbox
