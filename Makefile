# Parallax - the two commands that matter are `make test` and `make demo`.
SHELL := /bin/bash
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: setup test test-kernels test-host test-server test-contract demo run examples snapshot lint bench clean

setup:  ## venv + torch/torchvision pair + ComfyUI 0.3.75 test host (idempotent)
	@bash devtools/setup.sh

test: setup  ## all four tiers: kernels, host, server, contract
	$(PY) -m pytest tests/kernels tests/host tests/server tests/contract $(PYTEST_ARGS)

test-kernels: setup
	$(PY) -m pytest tests/kernels $(PYTEST_ARGS)

test-host: setup
	$(PY) -m pytest tests/host $(PYTEST_ARGS)

test-server: setup
	$(PY) -m pytest tests/server $(PYTEST_ARGS)

test-contract: setup
	$(PY) -m pytest tests/contract $(PYTEST_ARGS)

demo: setup  ## run every example workflow headless (tiny models, or PARALLAX_MODELS=<dir>)
	$(PY) devtools/demo.py

run: setup  ## the host with this pack at http://127.0.0.1:8188 (TINY=1 adds the tiny test checkpoint)
	@bash devtools/run_host.sh

examples: setup  ## regenerate example_workflows/*.json from devtools/example_specs
	$(PY) devtools/author_examples.py

snapshot: setup  ## approve node-schema changes: rewrite tests/contract/node_schema.json
	PARALLAX_UPDATE_SNAPSHOT=1 $(PY) -m pytest tests/contract -k snapshot $(PYTEST_ARGS)

lint: setup
	$(PY) -m ruff check .

bench: setup  ## every capability's benchmark (patched vs unpatched ratios)
	@for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf demo_output .pytest_cache .ruff_cache
