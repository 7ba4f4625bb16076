# The two commands a user needs: `make demo` (the embedded stack) and `make test` (every test).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: venv demo test lint bench clean envoy-config

$(BIN)/budget-router: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	# xds-protos ships an old copy of opentelemetry/proto that may overwrite opentelemetry-proto's
	# (pip unpacks in any order); put the real one back so the OTLP exporter imports.
	$(BIN)/pip install -q --force-reinstall --no-deps \
	  "opentelemetry-proto==$$($(BIN)/python -c 'import importlib.metadata as m; print(m.version("opentelemetry-proto"))')"
	$(BIN)/python -c "import opentelemetry.exporter.otlp.proto.grpc.trace_exporter"
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

envoy-config: venv
	$(BIN)/budget-router envoy-config --out envoy/envoy.yaml
	$(BIN)/budget-router envoy-config --snippets envoy/snippets
