"""Benchmark what Ray costs where it cannot help and what it gives where it can: the same harvest
in-process and as Ray shard tasks with 1 and 2 workers, through the real CLI, on this machine.

Each run is ``autointerp harvest`` in its own process into a fresh database, timed from the start
of the command to its exit (model loading, Ray's start, the shard tasks, the driver's commits and
the exact merge all included: what a user waits for). The three kinds run interleaved, ``--rounds``
times, so a change in the machine's load hurts them alike; the table shows each round and the
ratios of the best times. In-process, torch uses every core; a Ray task asks for one CPU and gets
one BLAS thread, so on 2 cores two workers hold the same compute as the in-process run and the
1-worker run shows the scaling from 1 to 2 workers.

    .venv/bin/python bench/bench_ray.py --out bench/results/ray.md
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KINDS = {
    "in-process": [],
    "ray, 1 worker": ["--executor", "ray:local", "--workers", "1"],
    "ray, 2 workers": ["--executor", "ray:local", "--workers", "2"],
}


def harvest_seconds(folder: Path, name: str, extra: list[str], args: argparse.Namespace) -> float:
    db = folder / f"{name.replace(' ', '_').replace(',', '')}-{time.monotonic_ns()}.db"
    cmd = [sys.executable, "-m", "autointerp", "harvest", "--model", args.model]
    cmd += ["--layers", args.layers, "--tokens", str(args.tokens), "--no-progress"]
    cmd += ["--db", str(db), *extra]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-2000:]}")
    db.unlink()
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--layers", default="0-9", help="layers harvested (default 0-9 of SmolLM2)")
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=None, help="also write the Markdown section here")
    args = ap.parse_args()
    times: dict[str, list[float]] = {k: [] for k in KINDS}
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        for r in range(args.rounds):
            for name, extra in KINDS.items():
                times[name].append(harvest_seconds(Path(tmp), name, extra, args))
                print(f"round {r + 1}: {name}: {times[name][-1]:.1f} s", file=sys.stderr)
    best = {k: min(v) for k, v in times.items()}
    load = os.getloadavg()
    lines = [
        "### Ray overhead: one harvest in-process and as Ray shard tasks",
        "",
        f"Command: `.venv/bin/python bench/bench_ray.py --model {args.model} --layers {args.layers}"
        f" --tokens {args.tokens} --rounds {args.rounds}`. {time.strftime('%Y-%m-%d %H:%M')},"
        f" {platform.machine()}, {os.cpu_count()} CPUs, load average {load[0]:.1f} at the end."
        " Wall time of the whole CLI command (model loads, Ray start, tasks, commits, merge),"
        " the three kinds interleaved per round.",
        "",
        "| run | " + " | ".join(f"round {i + 1} s" for i in range(args.rounds)) + " | best s |"
        " best / in-process |",
        "|---|" + "---:|" * (args.rounds + 2),
    ]
    for name, values in times.items():
        cells = " | ".join(f"{v:.1f}" for v in values)
        lines.append(
            f"| {name} | {cells} | {best[name]:.1f} | {best[name] / best['in-process']:.2f}x |"
        )
    lines += [
        "",
        f"Scaling, 1 -> 2 Ray workers: {best['ray, 1 worker'] / best['ray, 2 workers']:.2f}x"
        " faster.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
