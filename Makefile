# connect-trials: every target installs what it needs into .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Servers and clusters keep their state under $CONNECT_TRIALS_HOME (default ~/.connect-trials),
# the same folder for make, the connect-trials CLI and Python, so each finds what another started.
# MLflow 3 sends usage telemetry to its own servers; everything here stays on loopback. The
# servers started from here (Spark Connect, the cluster, mlflow server) inherit it.
export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: setup test lint demo server server-stop server-status cluster cluster-stop cluster-status \
	model-search bench bench-quick bench-scale clean

setup: $(VENV)/.installed $(VENV)/.system-packages

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	touch $@

# Debian packages that tests/test_proxy.py needs: an HTTP CONNECT proxy (tinyproxy) and iptables
# (it rejects the client's direct connections to the server). Installed once, as root (CI runs as
# root on a clean machine); without root the test says what is missing and skips. The test runs
# its own tinyproxy: the service the package starts (where systemd runs) is stopped and disabled.
SYSTEM_PACKAGES := tinyproxy iptables
$(VENV)/.system-packages:
	@mkdir -p $(@D); PATH="$$PATH:/usr/sbin:/sbin"; missing=""; \
	for tool in $(SYSTEM_PACKAGES); do command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then \
			echo "missing:$$missing (tests/test_proxy.py skips; as root: apt-get install$$missing)"; exit 0; \
		fi; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			--no-install-recommends $$missing; } >$(@D)/apt-get.log 2>&1 || { cat $(@D)/apt-get.log; exit 1; }; \
		case "$$missing" in *tinyproxy*) { systemctl disable --now tinyproxy || service tinyproxy stop; } \
			>>$(@D)/apt-get.log 2>&1 || true;; esac; \
		echo "installed from Debian's packages:$$missing (for tests/test_proxy.py)"; \
	fi; \
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

# A local standalone cluster: master, 2 workers x 2 cores, and a Connect server attached to it.
cluster: setup
	$(VENV)/bin/connect-trials cluster start --workers 2 --cores 2

cluster-status: setup
	$(VENV)/bin/connect-trials cluster status

cluster-stop: setup
	$(VENV)/bin/connect-trials cluster stop

# The model-search scenario on a local cluster whose workers cannot see this folder.
model-search: setup
	$(PY) -m integration.model_search

demo: setup
	$(VENV)/bin/connect-trials demo

bench: setup
	$(PY) -m benchmarks

bench-quick: setup
	$(PY) -m benchmarks --quick

# The scale workload at the issue's 10,000 trials (connect-trials, bare jobs, hyperopt serial and
# connect-trials+mlflow, whose child runs are counted and resumed with from_mlflow;
# ~25 minutes on 2 cores), merged into benchmarks/results (the other workloads' results stay).
# A smaller one: make bench-scale SCALE_TRIALS=500 BENCH_OUT=/tmp/bench-scale
SCALE_TRIALS ?= 10000
BENCH_OUT ?=
bench-scale: setup
	$(PY) -m benchmarks --scale --scale-trials $(SCALE_TRIALS) $(if $(BENCH_OUT),--out $(BENCH_OUT))

clean:
	-$(VENV)/bin/connect-trials server stop
	-$(VENV)/bin/connect-trials cluster stop
