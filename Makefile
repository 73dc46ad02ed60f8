# Set-up is part of every target: `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
APT_PACKAGES := libisal-dev libxxhash-dev liblmdb-dev zlib1g-dev pkg-config
STAMP := .make
NATIVE_SOURCES := $(wildcard ext/*.pyx ext/*.pxd ext/*.pxi ext/*.h) setup.py pyproject.toml

.PHONY: all deps install build test test-all lint demo bench bench-smoke compare clean

all: install

# Debian packages: installed only when one is missing (needs root or sudo).
deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

$(STAMP)/installed: $(NATIVE_SOURCES) | $(STAMP)
	$(MAKE) deps
	$(PYTHON) -m pip install -q --disable-pip-version-check -e '.[test]'
	$(PYTHON) setup.py -q build_ext --inplace
	touch $@

$(STAMP):
	mkdir -p $(STAMP)

install: deps $(STAMP)/installed

build: install

test: install
	$(PYTHON) -m pytest -q

# Includes the long soak/fault runs.
test-all: install
	$(PYTHON) -m pytest -q -m ''

lint: install
	$(PYTHON) -m ruff check src tests benchmarks setup.py

demo: install
	$(PYTHON) -m dsbackup.demo

bench: install
	$(PYTHON) -m pytest benchmarks -q --benchmark-only

bench-smoke: install
	DSBACKUP_BENCH_SCALE=0.01 $(PYTHON) -m pytest benchmarks -q --benchmark-disable

compare: install
	$(PYTHON) benchmarks/compare.py

clean:
	rm -rf $(STAMP) build src/dsbackup/_ext/*.so src/dsbackup/_ext/*.c ext/*.c
