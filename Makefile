# The README's two commands. Each sets up .venv itself on a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PLUGINS := $(wildcard plugins/*/pyproject.toml)
STAMP := $(VENV)/.ifadit-installed
OUT := outputs/quickstart

.PHONY: quickstart foundations demo test docs bench-flows clean

$(STAMP): pyproject.toml $(PLUGINS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,bench,ray]' $(foreach p,$(PLUGINS),-e $(dir $(p)))
	touch $(STAMP)

# The main job: the whole quickstart chain on SynthFaces 64 px (two recognizers, phase 1, phase 2), then a
# fresh key anonymizes and recovers the held-out test identities into $(OUT)/, scored by the judge.
quickstart: $(STAMP)
	IFADIT=$(VENV)/bin/ifadit OUT=$(OUT) bash recipes/quickstart/run.sh

# The pretrained SynthFaces foundations the quickstart stands on (identity encoder, judge, renderer, phase 1),
# trained from scratch and exported into ifadit/foundations/ (hours on a CPU; rerun to resume). They ship with
# ifadit.
foundations: $(STAMP)
	IFADIT=$(VENV)/bin/ifadit PY=$(PY) bash recipes/foundations/run.sh

# The flow alone on identity vectors, in seconds: keygen, 300 training steps, anonymize/recover/wrong keys.
demo: $(STAMP)
	mkdir -p outputs/demo
	rm -f outputs/demo/demo.key
	$(VENV)/bin/ifadit keygen outputs/demo/demo.key
	$(VENV)/bin/ifadit demo --config recipes/quickstart/flow_demo.yaml --key outputs/demo/demo.key --out outputs/demo

# pytest includes tests/test_docs.py: a strict build of the docs site (a broken link fails the tests). Two
# pytest-xdist workers, one test file each at a time (a file's tests share its fixtures and services).
test: $(STAMP)
	$(VENV)/bin/ruff check .
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -n 2 --dist loadfile

# The docs site (mkdocs.yml, docs/) into outputs/site/; `$(VENV)/bin/mkdocs serve` previews it.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict -d outputs/site

bench-flows: $(STAMP)
	$(PY) benchmarks/flows.py

clean:
	rm -rf $(VENV) outputs
