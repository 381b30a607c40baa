# make run: the daemon on the demo site (every device simulated).  make test: lint, types, layers, tests.  make bench: benchmarks.
# Works as root on a fresh Debian 12 with Python 3.11: system packages are installed only when
# missing, the venv lives in .venv, and the project is installed into it (editable).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# systemd and udev: systemd-analyze, -sysusers, -tmpfiles and udevadm lint systemd/ in the tests;
# Debian's container images leave them out (priority "important", not "required"). cage and
# xwayland: the kiosk unit's compositor, run headless by tests/test_systemd_run.py.
APT_PACKAGES := libzbar0 fonts-wqy-microhei fontconfig mosquitto mosquitto-clients chromium systemd udev cage xwayland shellcheck

.PHONY: run test lint typecheck layers pytest bench clean system-deps

$(STAMP): pyproject.toml Makefile
	@$(MAKE) --no-print-directory system-deps
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

system-deps:
	@missing=""; \
	for pkg in $(APT_PACKAGES); do dpkg -s $$pkg >/dev/null 2>&1 || missing="$$missing $$pkg"; done; \
	$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
		if command -v apt-get >/dev/null 2>&1; then \
			echo "installing system packages:$$missing"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
		else echo "missing system packages:$$missing (no apt-get here)"; fi; \
	fi

run: $(STAMP)
	$(VENV)/bin/edge run --demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

layers: $(STAMP)
	$(PY) tests/check_layers.py

pytest: $(STAMP) system-deps
	$(PY) -m pytest -q

test: lint typecheck layers pytest

bench: $(STAMP)
	$(PY) -m bench all

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
