#!/usr/bin/env bash
# One short GPU check (about 8 minutes after set-up): the gpu tests, then harvest tokens/s and N2G seconds/neuron
# for gemma-3-270m on the GPU against the same work on this machine's CPU cores, in one run (a ratio, not two runs
# on different days). Writes bench/results/gpu.md; quote it in BENCHMARKS.md with the date and the machine.
#
#   bash bench/gpu_check.sh            # on a machine with an NVIDIA GPU, after `make setup`
#
# Set-up needs the package registries (torch's CUDA build and the packaged models come from PyPI); the check itself
# runs offline.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
AI=.venv/bin/autointerp
[ -x "$AI" ] || make setup
nvidia-smi -L
$PY -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "torch sees no CUDA device")'

out=bench/results/gpu.md
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p bench/results

echo "== gpu tests"
timeout 240 $PY -m pytest -q -m gpu tests/test_gpu.py 2>&1 | tee "$work/tests.txt"

echo "== harvest and N2G, GPU then CPU"
GPU_TOKENS=${GPU_TOKENS:-262144}
CPU_TOKENS=${CPU_TOKENS:-16384}
LAYERS=3,9,15
timeout 120 $AI harvest --model gemma-3-270m --layers $LAYERS --tokens "$GPU_TOKENS" --device cuda \
    --db "$work/gpu.db" --no-progress --json > "$work/harvest-gpu.json"
timeout 120 $AI harvest --model gemma-3-270m --layers $LAYERS --tokens "$CPU_TOKENS" --device cpu \
    --db "$work/cpu.db" --no-progress --json > "$work/harvest-cpu.json"
timeout 60 $AI harvest --model gemma-3-270m --layers $LAYERS --tokens "$GPU_TOKENS" --device cuda --dtype bfloat16 \
    --db "$work/bf16.db" --no-progress --json > "$work/harvest-bf16.json"
timeout 120 $AI graph gemma-3-270m --layers $LAYERS --neurons top:8 --device cuda --db "$work/gpu.db" \
    --no-progress --json > "$work/n2g-gpu.json"
timeout 150 $AI graph gemma-3-270m --layers $LAYERS --neurons top:2 --device cpu --db "$work/cpu.db" \
    --no-progress --json > "$work/n2g-cpu.json"

$PY - "$work" "$out" <<'PYEOF'
import json, sys, subprocess, torch
work, out = sys.argv[1], sys.argv[2]
load = lambda name: json.load(open(f"{work}/{name}.json"))
h = {k: load(f"harvest-{k}") for k in ("gpu", "cpu", "bf16")}
rate = {k: v["tokens"] / v["seconds"] for k, v in h.items()}
n2g = {k: {r["layer"]: r["seconds_per_neuron"] for r in load(f"n2g-{k}")} for k in ("gpu", "cpu")}
gpu = torch.cuda.get_device_name(0)
cores = torch.get_num_threads()
lines = [f"# GPU check ({gpu}; CPU side: {cores} threads)", "",
         "Command: `bash bench/gpu_check.sh` (gemma-3-270m, layers 3,9,15, contexts of 64 tokens)", "",
         "| harvest | tokens | seconds | tokens/s |", "|---|---:|---:|---:|"]
for k, label in (("gpu", "CUDA float32"), ("bf16", "CUDA bfloat16"), ("cpu", "CPU float32")):
    lines.append(f"| {label} | {h[k]['tokens']} | {h[k]['seconds']:.1f} | {rate[k]:.0f} |")
lines += ["", f"GPU/CPU harvest speed-up (float32): **{rate['gpu'] / rate['cpu']:.1f}x**", "",
          "| N2G layer | CUDA s/neuron | CPU s/neuron | speed-up |", "|---:|---:|---:|---:|"]
for layer in sorted(n2g["gpu"]):
    g, c = n2g["gpu"][layer], n2g["cpu"].get(layer)
    lines.append(f"| {layer} | {g} | {c} | {c / g:.1f}x |" if g and c else f"| {layer} | {g} | {c} | - |")
tests = open(f"{work}/tests.txt").read().strip().splitlines()
lines += ["", "gpu tests: " + (tests[-1] if tests else "no output")]
open(out, "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PYEOF
echo "wrote $out"
