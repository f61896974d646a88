# Parallax - the two commands that matter are `make test` and `make demo`.
SHELL := /bin/bash
PY := .venv/bin/python
PYTEST_ARGS ?=
# test-host / test-server: HOST=test (ComfyUI 0.3.75), current (the provisioned current host) or both.
# Some shells export HOST as the machine's name: only a value given to make selects a host.
ifneq ($(origin HOST),command line)
HOST := test
endif

.PHONY: setup test test-kernels test-host test-server test-contract demo run examples snapshot lint bench clean

setup:  ## venv + torch/torchvision pair + ComfyUI 0.3.75 test host, + the current host if its tarball is there (idempotent)
	@bash devtools/setup.sh

test: setup  ## all four tiers on 0.3.75, then host + server again on the current host (if provisioned)
	$(PY) devtools/run_tests.py -- $(PYTEST_ARGS)

test-kernels: setup
	$(PY) -m pytest tests/kernels $(PYTEST_ARGS)

test-host: setup  ## HOST=current|both to run it on the current host
	$(PY) devtools/run_tests.py --host $(HOST) --tiers host -- $(PYTEST_ARGS)

test-server: setup  ## HOST=current|both to run it on the current host
	$(PY) devtools/run_tests.py --host $(HOST) --tiers server -- $(PYTEST_ARGS)

.PHONY: test-browser
test-browser: setup  ## the host's frontend in headless Chromium (both hosts unless HOST=test|current); screenshots in tests/browser/.screenshots
	$(PY) devtools/run_tests.py --host $(if $(filter command line,$(origin HOST)),$(HOST),both) --tiers browser -- $(PYTEST_ARGS)

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
