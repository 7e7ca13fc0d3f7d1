# Two commands do all set-up on a fresh machine:  make run   and   make test
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed-stamp
OUT     ?= out

export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.PHONY: run test test-fast lint bench install clean
PKGS    := artifacts features models tasks flows deployments serving

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## run the retrain flow on the built-in synthetic market (Prefect's local ephemeral server, SQLite)
run: $(STAMP)
	$(VENV)/bin/macd-ml retrain --out $(OUT)

## run the test suite (all of it; CI runs this after `make lint`)
test: $(STAMP)
	$(PY) -m pytest -q -n 3 --dist loadfile

## the inner loop: everything but the end-to-end runs marked slow (under a minute)
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

## ruff (lint + format check) and mypy on the package, as installed (macd_ml.*)
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	rm -rf .typecheck && mkdir -p .typecheck/macd_ml
	for d in $(PKGS); do ln -s ../../$$d .typecheck/macd_ml/$$d; done
	MYPYPATH=.typecheck $(VENV)/bin/mypy --namespace-packages --explicit-package-bases -p macd_ml

## benchmarks (print figures; never gate CI)
bench: $(STAMP)
	$(PY) bench/bench_features.py
	$(PY) bench/bench_models.py
	$(PY) bench/bench_resume.py
	test -e $(OUT)/current || $(MAKE) run
	$(PY) bench/bench_onnx.py $(OUT)/current
	$(PY) bench/bench_scoring.py $(OUT)/current

clean:
	rm -rf $(OUT) .pytest_cache .typecheck .mypy_cache
