# Set-up and entry points. Each target creates or reuses the local virtual environment .venv:
# `demo` installs what the demo needs (the sbi extra), `test` and `docs` the test and docs
# extras as well.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO_STAMP := $(VENV)/.installed-demo
TEST_STAMP := $(VENV)/.installed-test
MKDOCS := NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs

.PHONY: demo test docs lint bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(DEMO_STAMP): pyproject.toml constraints.txt | $(PY)
	$(PY) -m pip install --quiet -c constraints.txt -e ".[sbi]"
	touch $(DEMO_STAMP)

$(TEST_STAMP): pyproject.toml constraints.txt | $(PY)
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test,docs]"
	touch $(TEST_STAMP)

demo: $(DEMO_STAMP)
	$(VENV)/bin/hybridflow demo

lint: $(TEST_STAMP)
	$(PY) -m ruff check hybridflow tests benchmarks examples tools

test: lint
	OMP_NUM_THREADS=1 $(PY) -m pytest --cov=hybridflow --cov-report=term
	$(MKDOCS) build --strict

docs: $(TEST_STAMP)
	$(MKDOCS) build --strict

bench: $(DEMO_STAMP)
	$(PY) benchmarks/memory_depth.py --preset reference

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .coverage site
