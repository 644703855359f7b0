# autointerp: `make explain` runs the pipeline, `make test` the test suite. Both set up everything they need.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
AI     := $(VENV)/bin/autointerp

MODEL  ?= gemma-3-270m
CORPUS ?= default
LAYERS ?= 3,9,15
TOKENS ?= 16384
NEURONS ?= top:4
EXPLAIN_NEURONS ?= top:1
LLM    ?= qwen2.5-coder-1.5b
DB     ?= autointerp.db

.PHONY: setup explain test test-fast bench lint clean

## setup: virtualenv at .venv, pinned dependencies (torch 2.13.0 CPU from the local wheel), packaged models, corpus
setup: $(VENV)/.installed
	$(AI) setup

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

## explain: harvest MODEL on CORPUS for LAYERS, build N2G graphs for NEURONS of each layer, explain and score
## EXPLAIN_NEURONS of each layer with the local LLM (or OPENAI_BASE_URL), rank them by explanation score
explain: setup
	$(AI) harvest --model $(MODEL) --corpus $(CORPUS) --layers $(LAYERS) --tokens $(TOKENS) --db $(DB)
	$(AI) graph $(MODEL) --layers $(LAYERS) --neurons $(NEURONS) --db $(DB)
	$(AI) explain $(MODEL) --layers $(LAYERS) --neurons $(EXPLAIN_NEURONS) --local-llm $(LLM) --db $(DB)
	$(AI) rank $(MODEL) --by explanation --limit 10 --db $(DB)
	@echo "Look at one:  $(AI) neuron $(MODEL) L/N --db $(DB);  browse: $(AI) serve --db $(DB)"

## test: the whole suite, real-model tests included (what CI runs)
test: setup
	$(PY) -m pytest -q

## test-fast: skip the tests that use the real packaged model
test-fast: setup
	$(PY) -m pytest -q -m "not slow"

## bench: harvest throughput and harvest/forward ratio (empty and filled states), peak memory at two corpus sizes,
## N2G seconds per neuron (early/middle/late layer), prefix-reuse and naive/batched ratios, N2G quality on
## held-out top and random text (version 1 vs 2), graph similarity for 36,864 graphs, API neuron JSON requests/s and
## latency, explain + simulate seconds and tokens per neuron with the local LLM (and the echo fast path against
## stock llama.cpp). Raw sections go to bench/results/;
## BENCHMARKS.md quotes them with the commands that made them.
bench: setup
	mkdir -p bench/results
	$(PY) bench/bench_harvest.py --out bench/results/harvest.md
	$(PY) bench/bench_harvest.py --prefill-tokens 8192 --tokens 3072 --rounds 3 --no-memory --no-profile \
		--out bench/results/harvest-steady.md
	$(PY) bench/bench_n2g.py --out bench/results/n2g.md
	$(PY) bench/bench_n2g_quality.py --out bench/results/n2g-quality.md
	$(PY) bench/bench_similarity.py --out bench/results/similarity.md
	$(PY) bench/bench_api.py --compare-http --out bench/results/api.md
	$(AI) harvest --model gemma-3-270m --layers 3,9 --tokens 16384 --db bench/explain.db --no-progress
	$(AI) graph gemma-3-270m --layers 3,9 --neurons top:2 --db bench/explain.db --no-progress
	$(PY) bench/bench_explain.py --db bench/explain.db --layers 3,9 --neurons top:2 --echo-compare \
		--out bench/results/explain.md

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check autointerp tests bench

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
