# wxmgw: two commands do everything on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
DEBS := nginx libnginx-mod-rtmp ffmpeg gstreamer1.0-tools gstreamer1.0-plugins-base \
        gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly \
        gstreamer1.0-libav thrift-compiler redis-server libnginx-mod-stream prometheus chromium gcc
STAMP := $(VENV)/.installed
# The compiled modules (setup.py): a change to one rebuilds them with the install.
PYX := $(wildcard wxmgw/*/*.pyx)
# node-media-server, the second live server of the tests, pinned by its package-lock.json.
NMS := deploy/node-media-server
NMS_STAMP := $(NMS)/node_modules/.package-lock.json
SRC := $(wildcard wxmgw callroute tests bench)
CODE := $(wildcard wxmgw callroute bench)

.PHONY: setup debs run test lint unit integration fuzz bench demo demo-cluster clean

setup: debs $(STAMP) $(NMS_STAMP)

# Install only the Debian packages that are missing (apt-get update only when needed);
# Node.js and npm only when there is no npm at all (NodeSource's nodejs brings its own).
debs:
	@missing=$$(for p in $(DEBS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
	    | grep -q 'install ok installed' || echo $$p; done; \
	    command -v npm >/dev/null || echo nodejs npm); \
	if [ -n "$$missing" ]; then \
	    echo "installing Debian packages: $$missing"; \
	    SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	    $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive \
	    $$SUDO apt-get install -y -q --no-install-recommends $$missing; \
	fi

$(STAMP): setup.cfg pyproject.toml setup.py $(PYX)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $(STAMP)

$(NMS_STAMP): $(NMS)/package.json $(NMS)/package-lock.json
	npm ci --prefix $(NMS) --no-audit --no-fund --loglevel=error

run: setup
	$(PY) -m wxmgw.run

demo: setup
	$(PY) -m wxmgw.demo

# Redis, two callroute fronts and two gateways on this machine (README "A cluster").
demo-cluster: setup
	$(PY) -m wxmgw.demo_cluster

lint: setup
	$(PY) -m ruff check $(SRC)
	$(PY) -m mypy $(CODE)
	@# Tests may leave fixtures untyped; each folder apart, as both have a conftest.
	$(PY) -m mypy --allow-untyped-defs --allow-incomplete-defs tests/conftest.py tests/unit
	$(PY) -m mypy --allow-untyped-defs --allow-incomplete-defs tests/integration

unit: setup
	$(PY) -m pytest -q tests/unit

integration: setup
	$(PY) -m pytest -q tests/integration

test: lint
	$(PY) -m pytest -q -ra tests

# The Hypothesis properties with many more examples than `make test` gives them.
fuzz: setup
	HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest -q -m fuzz tests/unit

bench: setup
	@for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info .run bench/out $(PYX:.pyx=.c) $(PYX:.pyx=.*.so)
