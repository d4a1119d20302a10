# dnsotel — `make run` starts the exporter on this host, `make test` runs every test.
# Both install what is missing first (Debian packages, kernel header links, .venv).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
ARGS ?=
# `make run` watches this host, whose own DNS traffic is in the host's network namespace;
# the DaemonSet leaves it out by default (on a node it sees forwarded pod traffic twice).
RUN_ARGS ?= --host

.PHONY: setup run trace test lint typecheck unit lab dashboards bench clean

setup:
	@scripts/setup.sh deb venv

run: setup
	$(VENV)/bin/dnsotel run $(RUN_ARGS) $(ARGS)

trace: setup
	$(VENV)/bin/dnsotel trace $(ARGS)

lint: setup
	$(VENV)/bin/ruff check exporter tests bench grafana
	$(VENV)/bin/ruff format --check exporter tests bench grafana

typecheck: setup
	$(VENV)/bin/mypy

unit: setup
	$(PY) -m pytest tests/unit

lab: setup
	$(PY) -m pytest tests/lab

test: setup
	$(VENV)/bin/ruff check exporter tests bench grafana
	$(VENV)/bin/ruff format --check exporter tests bench grafana
	$(VENV)/bin/mypy
	$(PY) -m pytest tests

dashboards: setup
	$(PY) -m grafana.build

bench: setup
	$(PY) bench/decode.py
	$(PY) bench/pairing.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
