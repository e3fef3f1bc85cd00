VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench fuzz clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

demo: install
	bash benchmarks/../scripts/demo.sh

test: install
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check bigmodel_cli tests benchmarks fixtures
	$(BIN)/ruff format --check bigmodel_cli tests benchmarks fixtures
	$(BIN)/mypy

bench: install
	$(PY) benchmarks/run_all.py

fuzz: install
	BIGMODEL_FUZZ_EXAMPLES=2000 $(BIN)/pytest tests/fuzz

clean:
	rm -rf $(VENV) build *.egg-info
