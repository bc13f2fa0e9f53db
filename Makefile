# Two commands set everything up on a fresh machine (see README):
#   make study   -- run the flagship wide/deep study on its default data
#   make test    -- run the whole test suite
# Each creates the virtual environment .venv on first use.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup study test typecheck bench bench-quick bench-peers docs docs-deps clean

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

# The type checker over the package's public API (configuration: [tool.mypy] in
# pyproject.toml); about a minute.
typecheck: $(STAMP)
	$(PY) -m mypy

bench-quick: $(STAMP)
	cd benchmarks && ../$(VENV)/bin/asv machine --yes >/dev/null && ../$(VENV)/bin/asv run --python=same --quick --show-stderr --dry-run

bench: $(STAMP)
	cd benchmarks && ../$(VENV)/bin/asv machine --yes >/dev/null && ../$(VENV)/bin/asv run --python=same --show-stderr

# Side by side with torch-cka, ckatorch and cka-pytorch (docs/performance_results.md);
# the peers are installed without their dependencies so that torch stays pinned.
bench-peers: $(STAMP)
	$(PY) -m pip install -q --no-deps -r benchmarks/requirements-peers.txt
	$(PY) benchmarks/compare_peers.py $(ARGS)

# The documentation site: warnings are errors, every gallery example runs, no network.
docs: $(STAMP)
	$(VENV)/bin/sphinx-build -W --keep-going -b html docs docs/_build/html $(ARGS)

# The headless browser the docs test opens the built pages with (Debian's chromium,
# driven through chromedriver's plain-HTTP WebDriver protocol).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
docs-deps:
	@test -x /usr/bin/chromium -a -x /usr/bin/chromedriver || { $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q chromium chromium-driver; }

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .mypy_cache docs/_build docs/auto_examples docs/gen_modules \
		docs/api/generated docs/api/index.rst docs/sg_execution_times.rst
