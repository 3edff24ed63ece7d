# The README's two commands. Each sets up .venv itself on a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PLUGINS := $(wildcard plugins/*/pyproject.toml)
STAMP := $(VENV)/.ifadit-installed
OUT := outputs/quickstart

.PHONY: quickstart flow-demo test bench-flows clean

$(STAMP): pyproject.toml $(PLUGINS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,bench]' $(foreach p,$(PLUGINS),-e $(dir $(p)))
	touch $(STAMP)

quickstart: $(STAMP)
	IFADIT=$(VENV)/bin/ifadit OUT=$(OUT) bash recipes/quickstart/run.sh

flow-demo: $(STAMP)
	mkdir -p outputs/flow-demo
	rm -f outputs/flow-demo/demo.key
	$(VENV)/bin/ifadit keygen outputs/flow-demo/demo.key
	$(VENV)/bin/ifadit demo --config recipes/quickstart/flow_demo.yaml --key outputs/flow-demo/demo.key \
		--out outputs/flow-demo

test: $(STAMP)
	$(VENV)/bin/ruff check .
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

bench-flows: $(STAMP)
	$(PY) benchmarks/flows.py

clean:
	rm -rf $(VENV) outputs
