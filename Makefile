# Two commands do all set-up on a fresh machine:  make run   and   make test
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed-stamp
OUT     ?= out

export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.PHONY: run test bench install clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## run the retrain flow on the built-in synthetic market (Prefect's local ephemeral server, SQLite)
run: $(STAMP)
	$(VENV)/bin/macd-ml retrain --out $(OUT)

## run the test suite
test: $(STAMP)
	$(PY) -m pytest -q

## benchmarks (print figures; never gate CI)
bench: $(STAMP)
	$(PY) bench/bench_features.py
	$(PY) bench/bench_models.py
	$(PY) bench/bench_resume.py

clean:
	rm -rf $(OUT) .pytest_cache
