# The two commands a user needs: `make demo` (the embedded stack) and `make test` (every test).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: venv demo demo-azure test lint bench clean envoy-config deploy-config

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

# A heavy-tailed mix (80 % < 2K tokens, tail to 64K) of real prose, code and CJK text: both pools,
# calibration from a cold start, a report and a PNG of the learned ratios. ~70 s on 2 cores.
demo: venv
	mkdir -p out
	$(BIN)/budget-router up --replay synthetic --rate 20 --duration 60 --max-output-tokens 512 \
	  --png out/ratio-convergence.png --json out/demo-report.json

# The real Azure 2023 conversation trace (CC-BY), re-timed at 20 req/s: 99.99 % fits the short pool.
demo-azure: venv
	mkdir -p out
	$(BIN)/budget-router up --replay azure-conv --rate 20 --duration 60 --json out/demo-azure-report.json

# Static checks: lint, types (mypy, strict on algorithm/ and server/; config in pyproject.toml) and the
# layer contract (imports only point down; tests/test_layers.py).
lint: venv
	$(BIN)/ruff check extproc tests benchmarks
	$(BIN)/python -m mypy
	$(BIN)/python -m pytest -q tests/test_layers.py

test: lint
	$(BIN)/python -m pytest -q -ra

bench: venv
	$(BIN)/python benchmarks/router_cpu.py
	$(BIN)/python benchmarks/telemetry_overhead.py
	$(BIN)/python benchmarks/simulator_speed.py
	$(BIN)/python benchmarks/workload_speed.py
	$(BIN)/python benchmarks/live_load_cpu.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis

envoy-config: venv
	$(BIN)/budget-router envoy-config --out envoy/envoy.yaml
	$(BIN)/budget-router envoy-config --snippets envoy/snippets

# docker-compose.yml and deploy/kubernetes/, from the fleet shape in extproc/deploy/.
deploy-config: venv
	$(BIN)/budget-router deploy-config
