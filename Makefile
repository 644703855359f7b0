# autointerp: `make explain` runs the pipeline, `make test` the test suite. Both set up everything they need.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
AI     := $(VENV)/bin/autointerp

MODEL  ?= gemma-3-270m
CORPUS ?= default
# empty LAYERS: an early, a middle and a late layer of MODEL ((2k+1)/6 of its depth; Gemma: 3,9,15)
LAYERS ?=
TOKENS ?= 65536
# best:K: the K strongest neurons of a layer that are not dense, not from one document and not sharing a
# top context (docs/n2g.md, "Choosing neurons"); best:1 is the first of best:4
NEURONS ?= best:4
EXPLAIN_NEURONS ?= best:1
LLM    ?= qwen2.5-coder-1.5b
DB     ?= autointerp.db
# empty GRAPHS: graphs/<model>/
GRAPHS ?=

LAYERS_ARG = --layers $(or $(strip $(LAYERS)),auto)
GRAPHS_ARG = $(if $(strip $(GRAPHS)),-o $(GRAPHS))
REPORT_GRAPHS_ARG = $(if $(strip $(GRAPHS)),--graphs $(GRAPHS))

.PHONY: setup explain test test-fast browser bench lint clean

# compiler flags for llama.cpp's build (see the .installed rule)
NO_AMX := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16

## setup: virtualenv at .venv, pinned dependencies (torch 2.13.0 CPU from the local wheel), packaged models, corpus
setup: $(VENV)/.installed
	$(AI) setup

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# PyPI's Linux torch wheel is the CUDA build; a find-links folder may hold the CPU build, which a machine
	# with an NVIDIA GPU must not take
	if nvidia-smi -L >/dev/null 2>&1; then PIP_FIND_LINKS= $(PY) -m pip install -q torch==2.13.0; \
	else $(PY) -m pip install -q torch==2.13.0; fi
	# llama.cpp's AMX kernels crash (SIGSEGV on the first prompt) on some Intel Xeons with AMX: seen here on a
	# 2-core VM, and reported upstream (ggml-org/llama.cpp#20824). Build it for this CPU without them (the
	# AVX-512 kernels remain); no cache, so an earlier build with them is not reused.
	CMAKE_ARGS='-DCMAKE_C_FLAGS="$(NO_AMX)" -DCMAKE_CXX_FLAGS="$(NO_AMX)"' $(PY) -m pip install -q --no-cache-dir \
		"$$(grep -o 'llama-cpp-python\[server\]==[0-9.]*' pyproject.toml)"
	$(PY) -m pip install -q -e '.[dev,ray]'
	touch $@

## explain: harvest MODEL on CORPUS for LAYERS, build N2G graphs for NEURONS of each layer, explain
## and score EXPLAIN_NEURONS of each layer with the local LLM (or OPENAI_BASE_URL), export graphs
## to GRAPHS (GraphML + SVG), compute similar neurons by graph overlap, index every harvested neuron's
## peak tokens for token search, report the best-explained
explain: setup
	$(AI) harvest --model $(MODEL) --corpus $(CORPUS) $(LAYERS_ARG) --tokens $(TOKENS) --db $(DB)
	$(AI) graph $(MODEL) $(LAYERS_ARG) --neurons $(NEURONS) --db $(DB)
	$(AI) explain $(MODEL) $(LAYERS_ARG) --neurons $(EXPLAIN_NEURONS) --local-llm $(LLM) --db $(DB)
	$(AI) export graphml $(MODEL) $(LAYERS_ARG) --neurons $(NEURONS) $(GRAPHS_ARG) --db $(DB)
	$(AI) similarity $(MODEL) --db $(DB)
	$(AI) index $(MODEL) --db $(DB)
	$(AI) report $(MODEL) $(LAYERS_ARG) $(REPORT_GRAPHS_ARG) --db $(DB)

## test: the whole suite, real-model and browser tests included (what CI runs)
test: setup browser
	$(PY) -m pytest -q

## browser: the Debian chromium package the browser tests drive (installed when missing; root/sudo)
browser:
	@command -v chromium >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium; \
		elif command -v sudo >/dev/null 2>&1; then \
			sudo apt-get update -qq && sudo apt-get install -y -qq chromium; \
		else echo "error: the browser tests need chromium: run  sudo apt-get install -y chromium" >&2; \
			exit 2; fi; }

## test-fast: skip the tests that use the real packaged model (the browser tests still run)
test-fast: setup browser
	$(PY) -m pytest -q -m "not slow"

## bench: harvest throughput and harvest/forward ratio (empty, filled and deeply filled states; a real 131k-token
## harvest end to end against a bare forward), peak memory at two corpus sizes and at two sizes of one single-line
## document, the CPU's matrix-product rate against the forward pass's,
## N2G seconds per neuron (early/middle/late layer), prefix-reuse, bfloat16 and naive/batched ratios, N2G quality on
## held-out top and random text (version 1 vs 2), graph similarity for 36,864 graphs, API neuron JSON requests/s and
## latency, explain + simulate seconds and tokens per neuron with the local LLM (and the echo fast path against
## stock llama.cpp), Ray's overhead on a harvest (in-process vs 1 and 2 workers). Raw sections go to bench/results/;
## BENCHMARKS.md quotes them with the commands that made them.
bench: setup
	mkdir -p bench/results
	$(PY) bench/bench_harvest.py --out bench/results/harvest.md
	$(PY) bench/bench_harvest.py --prefill-tokens 8192 --tokens 3072 --rounds 3 --no-memory --no-profile \
		--out bench/results/harvest-steady.md
	$(PY) bench/bench_harvest.py --prefill-tokens 65536 --tokens 3072 --rounds 3 --no-memory --no-profile \
		--out bench/results/harvest-deep.md
	$(PY) bench/bench_harvest.py --prefill-tokens 196608 --tokens 3072 --rounds 3 --no-memory --no-profile \
		--out bench/results/harvest-whole-run-churn.md
	$(PY) bench/bench_harvest_run.py --tokens 131072 --out bench/results/harvest-run.md
	$(PY) bench/bench_document_memory.py --out bench/results/document-memory.md
	$(PY) bench/bench_matmul.py --out bench/results/matmul.md
	$(PY) bench/bench_n2g.py --out bench/results/n2g.md
	$(PY) bench/bench_n2g.py --versus bfloat16 --naive-neurons 0 --out bench/results/n2g-bf16.md
	$(PY) bench/bench_n2g_quality.py --out bench/results/n2g-quality.md
	$(PY) bench/bench_similarity.py --out bench/results/similarity.md
	$(PY) bench/bench_api.py --compare-http --out bench/results/api.md
	$(PY) bench/bench_ray.py --out bench/results/ray.md
	$(AI) harvest --model gemma-3-270m --layers 3,9 --tokens 16384 --db bench/explain.db --no-progress
	$(AI) graph gemma-3-270m --layers 3,9 --neurons top:2 --db bench/explain.db --no-progress
	$(PY) bench/bench_explain.py --db bench/explain.db --layers 3,9 --neurons top:2 --echo-compare \
		--out bench/results/explain.md

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check autointerp tests bench
	$(VENV)/bin/ruff format --check autointerp tests bench

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
