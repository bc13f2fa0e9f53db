# Two commands set everything up on a fresh machine (see README):
#   make study   -- run the flagship wide/deep study on its default data
#   make test    -- run the whole test suite
# Each creates the virtual environment .venv on first use.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup study test bench bench-quick docs clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

study: $(STAMP)
	$(PY) examples/wide_deep_study.py $(ARGS)

test: $(STAMP)
	$(PY) -m pytest $(ARGS)

bench-quick: $(STAMP)
	cd benchmarks && ../$(VENV)/bin/asv machine --yes >/dev/null && ../$(VENV)/bin/asv run --python=same --quick --show-stderr --dry-run

bench: $(STAMP)
	cd benchmarks && ../$(VENV)/bin/asv machine --yes >/dev/null && ../$(VENV)/bin/asv run --python=same --show-stderr

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis docs/_build
