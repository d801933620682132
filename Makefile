# Entry points: `make run` (demo app + worker), `make test` (every test, browser tests included) and
# `make test-fast` (the tests not marked slow or browser).
# Each creates .venv and installs on a fresh machine; nothing is installed by hand.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test test-fast install chromium bench clean

# The project itself is installed editable: the `annotator` command (.venv/bin/annotator) runs this clone's
# code from any folder. Its dependencies come from the requirements files first (runtime, benchmark and test
# extras: `make test` runs toy benchmarks); setuptools (pulled in by torch) builds it without a download.
REQUIREMENTS := requirements.txt requirements-bench.txt requirements-test.txt
$(STAMP): $(REQUIREMENTS) pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q $(addprefix -r ,$(REQUIREMENTS))
	$(PY) -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

# Debian's chromium for the Playwright browser tests (Playwright's own browser download cannot work offline).
chromium:
	@command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q chromium; }

test: $(STAMP) chromium
	$(PY) -m pytest -q

# The tests not marked slow or browser (pytest.ini): under a minute, no chromium needed.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not browser"

run: $(STAMP)
	$(VENV)/bin/annotator demo

# The quality and budget benchmarks on CIFAR-10N (not in the repo): make bench CIFAR10N=DIR (labels.csv, train/).
bench: $(STAMP)
	@test -n "$(CIFAR10N)" || { echo "usage: make bench CIFAR10N=DIR (the CIFAR-10N folder: labels.csv, train/)"; exit 2; }
	$(PY) -m benchmarks.quality --data $(CIFAR10N) --labels aggre --json benchmarks/out/quality-aggre.json
	$(PY) -m benchmarks.budget --data $(CIFAR10N) --labels aggre --json benchmarks/out/budget-aggre.json

clean:
	rm -rf $(VENV) data/state benchmarks/.cache *.egg-info
