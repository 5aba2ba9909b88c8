# connect-trials: every target installs what it needs into .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STATE := $(CURDIR)/.connect-trials
export CONNECT_TRIALS_HOME := $(STATE)

.PHONY: setup test lint demo server server-stop server-status bench bench-quick clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	touch $@

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check connect_trials tests integration benchmarks
	$(VENV)/bin/mypy connect_trials

# Start the embedded Spark Connect server (state under .connect-trials/) and print its URL.
server: setup
	$(VENV)/bin/connect-trials server start

server-status: setup
	$(VENV)/bin/connect-trials server status

server-stop: setup
	$(VENV)/bin/connect-trials server stop

demo: setup
	$(VENV)/bin/connect-trials demo

bench: setup
	$(PY) -m benchmarks

bench-quick: setup
	$(PY) -m benchmarks --quick

clean:
	-$(VENV)/bin/connect-trials server stop
	rm -rf $(STATE)
