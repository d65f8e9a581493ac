# The two commands of the README: `make demo` and `make test`. Both build a local venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install demo test chaos matrix lint bench clean

$(VENV)/.installed: pyproject.toml setup.py edgeproxy/_fastroute.pyx edgeproxy/_fastroute.pxd
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/edgeproxy demo

# The whole suite: ruff, mypy and pytest (unit + functional, real servers on loopback).
test: install
	EDGEPROXY_REQUIRE_EXTENSIONS=$${EDGEPROXY_REQUIRE_EXTENSIONS:-1} $(PY) -m pytest -q

# The chaos suite (issue 11): faults injected into real processes (SIGKILL, a dropped COMMIT, Redis
# killed, hung providers, slow clients...), each test with the figure it must hold; then the long
# runs, bench/chaos_*.py, if there are any. Redis and PostgreSQL must be up: a skip proves nothing.
chaos: install
	EDGEPROXY_REQUIRE_SERVICES=$${EDGEPROXY_REQUIRE_SERVICES:-1} $(PY) -m pytest -q tests/chaos
	@for run in bench/chaos_*.py; do \
		[ -e "$$run" ] || continue; \
		echo "$$run"; $(PY) "$$run" || exit 1; \
	done

# The translation matrix (every ingress dialect x every upstream protocol) from its tests.
matrix: install
	EDGEPROXY_MATRIX_OUT=tests/translation_matrix.md $(PY) -m pytest -q tests/functional/test_matrix.py

lint: install
	$(VENV)/bin/ruff check edgeproxy tests bench
	$(VENV)/bin/mypy

bench: install
	$(PY) bench/bench_router.py
	$(PY) bench/bench_proxy.py
	$(PY) bench/bench_ingress.py

clean:
	rm -rf $(VENV) build *.egg-info edgeproxy/_fastroute.c edgeproxy/*.so
