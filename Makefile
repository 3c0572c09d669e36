# `make test` and `make demo` each create .venv when it is missing and install into it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: test demo lint docs bench clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,dev,docs]'
	touch $(STAMP)

test: $(STAMP) lint docs
	$(PY) -m pytest

lint: $(STAMP)
	$(PY) -m ruff check connectorsync tests examples
	$(PY) -m ruff format --check connectorsync tests examples
	$(PY) -m mypy

docs: $(STAMP)
	$(PY) -m sphinx -W --keep-going -q -b html docs docs/_build/html

demo: $(STAMP)
	$(PY) examples/temperature_logger.py

bench: $(STAMP)
	$(PY) tests/benchmarks/bench_insert.py
	$(PY) tests/benchmarks/bench_sync.py

clean:
	rm -rf $(VENV) docs/_build build *.egg-info
