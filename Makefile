# Two entry points for a fresh machine: `make up` (the main job) and `make test` (everything CI runs).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: up test lint unit schemas clean browser

$(STAMP): pyproject.toml setup.py shared/learn/solver/_c4solver.c
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

up: $(STAMP)
	$(VENV)/bin/conclave up $(ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

# Two pytest workers: the CPU-heavy tests (xdist group "heavy") run one at a time on one of
# them while the light ones, mostly waiting on servers and timers, share the other.
test: $(STAMP) lint browser
	$(PY) -m pytest -n 2 --dist loadgroup --durations=25 $(PYTEST_ARGS)

# The dashboard test drives Debian's headless chromium; as root (CI) it is installed if missing.
browser:
	command -v chromium >/dev/null || [ "$$(id -u)" != 0 ] || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

unit: $(STAMP)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

schemas: $(STAMP)
	$(VENV)/bin/conclave schemas --out schemas/json

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
