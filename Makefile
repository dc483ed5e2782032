# `make run` and `make test` build .venv from requirements.txt on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CONFIG ?= experiments/default.yaml
OUT ?= results/default

.PHONY: run quick test bench samples report clean

$(VENV)/installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	touch $@

run: $(VENV)/installed
	$(PY) run_all.py --config $(CONFIG)

quick: $(VENV)/installed
	$(PY) run_all.py --config experiments/quick.yaml

# One intra-op thread: tests start several torch processes at once (DDP, kill/resume), and on a
# 2-core machine competing 2-thread ops stall each other by several times.
test: $(VENV)/installed
	OMP_NUM_THREADS=1 $(PY) -m pytest -q tests

# The report of OUT rebuilt from its cells alone (metrics.csv too), e.g. make report OUT=results/quick.
report: $(VENV)/installed
	$(if $(wildcard $(OUT)/cells),,$(error OUT=$(OUT) is not a results folder (it has no cells/); give OUT=<folder of a run>))
	$(PY) run_all.py --report-only --out $(OUT)

bench: $(VENV)/installed
	$(PY) -m bench.perf

samples: $(VENV)/installed
	$(PY) scripts/render_samples.py

clean:
	rm -rf $(VENV)
