# The README's two commands. Each sets up .venv itself on a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PLUGINS := $(wildcard plugins/*/pyproject.toml)
STAMP := $(VENV)/.ifadit-installed
OUT := outputs/quickstart

.PHONY: quickstart quickstart-train test bench-flows clean

$(STAMP): pyproject.toml $(PLUGINS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,bench]' $(foreach p,$(PLUGINS),-e $(dir $(p)))
	touch $(STAMP)

# Until the image training chain meets its goals (issue 4), the main job is the flow demo.
quickstart: $(STAMP)
	mkdir -p $(OUT)
	rm -f $(OUT)/demo.key
	$(VENV)/bin/ifadit keygen $(OUT)/demo.key
	$(VENV)/bin/ifadit demo --config recipes/quickstart/flow_demo.yaml --key $(OUT)/demo.key --out $(OUT)

# The image chain on SynthFaces 64 px (recognizers, phase 1, phase 2, scoring): work in progress.
quickstart-train: $(STAMP)
	IFADIT=$(VENV)/bin/ifadit OUT=outputs/quickstart-train bash recipes/quickstart/run.sh

test: $(STAMP)
	$(VENV)/bin/ruff check .
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

bench-flows: $(STAMP)
	$(PY) benchmarks/flows.py

clean:
	rm -rf $(VENV) outputs
