# The two commands a user needs: `make demo` (the embedded stack) and `make test` (every test).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: venv demo test lint bench clean

$(BIN)/budget-router: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

venv: $(BIN)/budget-router

demo: venv
	$(BIN)/budget-router up --replay azure-conv --rate 20 --duration 60

test: venv
	$(BIN)/ruff check extproc tests benchmarks
	$(BIN)/python -m pytest -q -ra

bench: venv
	$(BIN)/python benchmarks/router_cpu.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
