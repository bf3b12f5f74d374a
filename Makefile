# Quick start: `make demo`, `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --disable-pip-version-check -q -c requirements.lock
OUT ?= out/demo

.PHONY: demo test bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.base: $(PY) setup.py requirements.lock
	$(PIP) -e .
	@touch $@

$(VENV)/.dev: $(VENV)/.base
	$(PIP) -e '.[dev,train,gcp]'
	@touch $@

demo: $(VENV)/.base
	$(PY) -m chimed_pipeline run --output $(OUT)

test: $(VENV)/.dev
	$(PY) -m pytest -q

clean:
	rm -rf out .pytest_cache
