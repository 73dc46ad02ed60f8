# Set-up is part of every target: `make demo` and `make test` work on a fresh machine.
#
# Everything Python runs inside a project-local virtual environment ($(VENV), git-ignored),
# created from $(PYTHON) with no system site-packages, so nothing installed by hand elsewhere
# can hide a missing dependency: every Python package, build-time (Cython, setuptools) and
# run-time, comes from pyproject.toml through pip's isolated PEP 517 build.
PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
PIP := $(VPY) -m pip -q --disable-pip-version-check
APT_PACKAGES := libisal-dev libxxhash-dev liblmdb-dev zlib1g-dev libssl-dev libzstd-dev pkg-config
NATIVE_SOURCES := $(wildcard ext/*.pyx ext/*.pxd ext/*.pxi ext/*.h) setup.py pyproject.toml
PACKAGE_SOURCES := $(NATIVE_SOURCES) $(shell find src -name '*.py' -o -name '*.pyi' 2>/dev/null)
# Which interpreter the venv was made from: a different PYTHON= makes a new venv.
PYTHON_ID := $(shell $(PYTHON) -c 'import sys; print(sys.version.split()[0], sys.base_prefix)' 2>/dev/null)
WHEEL_VENV := build/wheel-venv

.PHONY: all deps venv install build test test-all lint demo bench bench-smoke compare \
        wheel wheel-test clean

all: install

# Debian packages: installed only when one is missing (needs root or sudo). A Debian system
# Python also needs python3-venv (ensurepip) and python3-dev (Python.h) to build the extension.
deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	$(PYTHON) -c 'import ensurepip' 2>/dev/null || missing="$$missing python3-venv"; \
	$(PYTHON) -c 'import os, sysconfig; raise SystemExit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
	  || missing="$$missing python3-dev"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

# The venv, re-made when PYTHON names another interpreter.
$(VENV)/.python-id: FORCE
	@if [ "$$(cat $@ 2>/dev/null)" != "$(PYTHON_ID)" ]; then \
	  [ -n "$(PYTHON_ID)" ] || { echo "make: cannot run PYTHON=$(PYTHON)" >&2; exit 2; }; \
	  $(MAKE) --no-print-directory deps; \
	  echo "creating $(VENV) from $(PYTHON) ($(PYTHON_ID))"; \
	  rm -rf $(VENV) && $(PYTHON) -m venv $(VENV) && echo "$(PYTHON_ID)" > $@; \
	fi

venv: $(VENV)/.python-id

# pip builds the extension in its own isolated environment from [build-system] requires and
# installs the package in editable mode (the .so files land in src/dsbackup/_ext/).
$(VENV)/.installed: $(VENV)/.python-id $(NATIVE_SOURCES)
	@$(MAKE) --no-print-directory deps
	$(PIP) install -e '.[test,wheel]'
	@touch $@

install: deps $(VENV)/.installed

build: install

# The wheel smoke test runs first so that pytest's summary is the last line of the output.
test: install wheel-test
	$(VPY) -m pytest -q

# Includes the long soak/fault runs.
test-all: install wheel-test
	$(VPY) -m pytest -q -m ''

lint: install
	$(VPY) -m ruff check src tests benchmarks setup.py

demo: install
	$(VPY) -m dsbackup.demo

bench: install
	$(VPY) -m pytest benchmarks -q --benchmark-only

bench-smoke: install
	DSBACKUP_BENCH_SCALE=0.01 $(VPY) -m pytest benchmarks -q --benchmark-disable

compare: install
	$(VPY) benchmarks/compare.py

# A wheel that installs without compilers or -dev packages: pip builds it (PEP 517, isolated),
# auditwheel copies libisal, libxxhash, liblmdb, libzstd (ext/compress.pyx) and libcrypto
# (OpenSSL, linked by ext/seal.pyx)
# into it and retags it manylinux — the same
# repair cibuildwheel runs for the release wheels (pyproject's [tool.cibuildwheel]).
wheel: dist/.wheel-built

dist/.wheel-built: $(VENV)/.installed $(PACKAGE_SOURCES)
	@$(MAKE) --no-print-directory deps
	rm -rf dist/raw dist/*.whl
	$(PIP) wheel --no-deps -w dist/raw .
	PATH="$(abspath $(VENV))/bin:$$PATH" $(VPY) -m auditwheel repair -w dist dist/raw/*.whl
	rm -rf dist/raw
	@ls dist/*.whl
	@touch $@

# Installs the repaired wheel into a new, empty venv and runs a verified round trip with it,
# from outside the source tree.
wheel-test: dist/.wheel-tested

dist/.wheel-tested: dist/.wheel-built tests/wheel_smoke.py
	rm -rf $(WHEEL_VENV)
	$(PYTHON) -m venv $(WHEEL_VENV)
	$(WHEEL_VENV)/bin/python -m pip -q --disable-pip-version-check install dist/*.whl
	cd /tmp && $(abspath $(WHEEL_VENV))/bin/python -I $(abspath tests/wheel_smoke.py)
	@touch $@

clean:
	rm -rf $(VENV) build dist src/dsbackup/_ext/*.so src/dsbackup/_ext/*.c ext/*.c .make

FORCE:
