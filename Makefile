# Set-up and entry points. Each target creates or reuses the local virtual environment .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) benchmarks/memory_depth.py --preset small

test: $(STAMP)
	$(PY) -m ruff check hybridflow tests benchmarks examples
	$(PY) -m pytest --cov=hybridflow --cov-report=term

bench: $(STAMP)
	$(PY) benchmarks/memory_depth.py --preset reference

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .coverage
