# `make run` and `make test` build .venv from requirements.txt on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CONFIG ?= experiments/default.yaml

.PHONY: run quick test bench samples report clean

$(VENV)/installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	touch $@

run: $(VENV)/installed
	$(PY) run_all.py --config $(CONFIG)

quick: $(VENV)/installed
	$(PY) run_all.py --config experiments/quick.yaml

test: $(VENV)/installed
	$(PY) -m pytest -q tests

bench: $(VENV)/installed
	$(PY) -m bench.perf

samples: $(VENV)/installed
	$(PY) scripts/render_samples.py

clean:
	rm -rf $(VENV)
