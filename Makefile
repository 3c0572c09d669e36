# `make test` and `make demo` each create .venv when it is missing and install into it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# The demo needs only the package and its dependencies, not the test, dev and docs extras:
# its own stamp, in the same .venv. Installing everything also installs what the demo needs,
# so the full install touches both stamps.
DEMO_STAMP := $(VENV)/.demo-installed-stamp

.PHONY: test demo lint docs bench soak clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,dev,docs]'
	touch $(STAMP) $(DEMO_STAMP)

# Not --quiet: a first `make demo` downloads, and pip's progress says what it is waiting for.
$(DEMO_STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -e .
	touch $(DEMO_STAMP)

test: $(STAMP) lint docs
	$(PY) -m pytest

lint: $(STAMP)
	$(PY) -m ruff check connectorsync tests examples
	$(PY) -m ruff format --check connectorsync tests examples
	$(PY) -m mypy

docs: $(STAMP)
	$(PY) -m sphinx -W --keep-going -q -b html docs docs/_build/html

demo: $(DEMO_STAMP)
	$(PY) examples/temperature_logger.py

bench: $(STAMP)
	$(PY) tests/benchmarks/bench_insert.py
	$(PY) tests/benchmarks/bench_sync.py
	$(PY) tests/benchmarks/bench_disk.py
	$(PY) tests/benchmarks/bench_wire.py
	$(PY) tests/benchmarks/bench_mqtt.py
	$(PY) tests/benchmarks/bench_live.py
	$(PY) tests/benchmarks/bench_fleet.py
	$(PY) tests/benchmarks/bench_fanout.py

# Long runs of the delivery model (tests/test_model.py: at least 5,000 steps per variant:
# ordered, idempotent, at_least_once, MQTT, NATS, PostgreSQL, batched, sealed (a cache sealed
# with a key), lanes, fanout2, fanout3, and priorities and priorities_at_least_once (streams
# with priorities and thin flags in a capped cache: on_full thin, thin_or_reject and
# drop_oldest; thinned counted); shrunk to a minimal example on failure;
# tests/model/settings.py has the knobs; influxd, mosquitto, nats-server and PostgreSQL are
# required, not skipped) and of the kill -9 crash test under several seeds (36 kills each;
# `make test` runs 18 under one seed), 1,000 power cuts (tests/test_powercut.py; POWERCUT_CUTS=n,
# POWERCUT_SEED=s), and a live stream kept current while a 1,000,000-point backlog drains
# into influxd (tests/test_lanes.py), an alarm that overtakes a 1,000,000-point backlog
# (tests/test_priority.py), and 2,000 examples of the remotes' positions against a
# model of sets (tests/test_positions.py), and a week of a 1 Hz stream thinned into
# max_cached=10000 and 60,000 readings into max_cache_bytes=400000 (tests/test_thin.py;
# `make test` runs them scaled down).
soak: $(STAMP)
	CONNECTORSYNC_SOAK=1 CONNECTORSYNC_REQUIRE_INFLUXDB=1 CONNECTORSYNC_REQUIRE_MOSQUITTO=1 \
		CONNECTORSYNC_REQUIRE_NATS=1 CONNECTORSYNC_REQUIRE_POSTGRES=1 \
		$(PY) -m pytest -s --timeout=3600 tests/test_model.py; status=$$?; \
	CONNECTORSYNC_SOAK=1 $(PY) -m pytest -s --timeout=3600 tests/test_powercut.py || status=1; \
	CONNECTORSYNC_SOAK=1 $(PY) -m pytest --timeout=900 tests/test_lanes.py -k influxd || status=1; \
	CONNECTORSYNC_SOAK=1 $(PY) -m pytest --timeout=900 tests/test_priority.py -k alarm || status=1; \
	CONNECTORSYNC_SOAK=1 $(PY) -m pytest --timeout=1800 tests/test_positions.py || status=1; \
	CONNECTORSYNC_SOAK=1 $(PY) -m pytest -s --timeout=900 tests/test_thin.py -k "week or max_cache_bytes" \
		|| status=1; \
	for seed in 1 2 3 4 5 6; do \
		CONNECTORSYNC_SOAK=1 CRASH_SEED=$$seed $(PY) -m pytest --timeout=900 tests/test_crash.py \
			|| status=1; \
	done; \
	exit $$status

clean:
	rm -rf $(VENV) docs/_build build *.egg-info
