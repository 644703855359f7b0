"""API benchmark: neuron JSON requests per second and latency percentiles over loopback with a concurrent client.

The server is started the way a user starts it (``autointerp serve`` in its own process); the client is a minimal
asyncio HTTP/1.1 keep-alive client in this process (httpx would cost more CPU per request than the server, and both
share the same cores). Phases, each for ``--seconds``:

* ``neuroscope cold`` - every request is a neuron not asked for before (nothing cached: SQLite read + JSON encode);
* ``neuroscope warm`` - requests cycle over 200 neurons (served from the per-run byte cache);
* ``stats`` and ``all`` (stats, examples, graph, explanation, similar, weights read fresh every time) on random
  neurons.

Usage: ``python bench/bench_api.py --out bench/results/api.md`` (harvests smollm2-135m layers 3-4 over 8,192
tokens into ``--db`` first if that file does not exist).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_db(db: Path, model: str, layers: str, tokens: int) -> None:
    if db.exists():
        return
    print(f"harvesting {model} layers {layers} ({tokens} tokens) into {db} ...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "autointerp", "harvest", "--model", model, "--layers", layers,
                    "--tokens", str(tokens), "--db", str(db), "--no-progress"], cwd=REPO, check=True)


async def _request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> tuple[int, int]:
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    body = await reader.readexactly(length)
    return status, len(body)


async def run_phase(port: int, paths: list[str], seconds: float, concurrency: int) -> dict[str, float]:
    """``concurrency`` keep-alive connections, each sending its next request as soon as the previous answer
    arrived, until ``seconds`` have passed; every latency is recorded."""
    latencies: list[float] = []
    sizes: list[int] = []
    errors = 0
    it = iter(paths)
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < deadline:
                path = next(it, None)
                if path is None:
                    return
                t0 = time.perf_counter()
                status, size = await _request(reader, writer, path)
                latencies.append(time.perf_counter() - t0)
                sizes.append(size)
                if status != 200:
                    errors += 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    lat = np.array(latencies) * 1000
    return {"requests": len(lat), "seconds": elapsed, "rps": len(lat) / elapsed, "p50": float(np.percentile(lat, 50)),
            "p90": float(np.percentile(lat, 90)), "p99": float(np.percentile(lat, 99)), "max": float(lat.max()),
            "errors": errors, "kb": float(np.mean(sizes)) / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", default="/tmp/autointerp-bench-api.db")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--layers", default="3,4")
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--out", default=None, help="write a markdown section here")
    args = ap.parse_args()

    db = Path(args.db)
    ensure_db(db, args.model, args.layers, args.tokens)
    info = json.loads(subprocess.run([sys.executable, "-m", "autointerp", "runs", "--db", str(db), "--json"],
                                     cwd=REPO, capture_output=True, text=True, check=True).stdout)
    harvest = next(r for r in info if r["stage"] == "harvest" and r["status"] == "complete")
    model, layers = harvest["model"], harvest["config"]["layers"]

    port = free_port()
    cmd = [sys.executable, "-m", "autointerp", "serve", "--db", str(db), "--port", str(port)]
    server = subprocess.Popen(cmd, cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    raise SystemExit(f"server did not start: {server.stderr.read() if server.stderr else ''}") from None
                time.sleep(0.2)
        d_mlp = json.loads(subprocess.run(["curl", "-s", f"http://127.0.0.1:{port}/api/{model}"],
                                          capture_output=True, text=True).stdout)["d_mlp"]
        rng = random.Random(0)
        everyone = [(layer, n) for layer in layers for n in range(d_mlp)]
        rng.shuffle(everyone)
        cold = [f"/api/{model}/neuroscope/{la}/{n}" for la, n in everyone]
        hot_set = everyone[:200]
        warm = [f"/api/{model}/neuroscope/{la}/{n}" for la, n in hot_set] * 2000
        # the warm set is asked for once first, so the warm phase measures the cached path
        asyncio.run(run_phase(port, warm[:200], 60, args.concurrency))
        stats = [f"/api/{model}/stats/{la}/{n}" for la, n in (rng.choice(everyone) for _ in range(400000))]
        alls = [f"/api/{model}/all/{la}/{n}" for la, n in (rng.choice(everyone) for _ in range(400000))]
        results = {}
        for name, paths in (("neuroscope, cold (never asked before)", cold), ("neuroscope, warm (200 neurons)", warm),
                            ("stats, random neurons", stats), ("all services, random neurons", alls)):
            results[name] = asyncio.run(run_phase(port, paths, args.seconds, args.concurrency))
            r = results[name]
            print(f"{name:<40} {r['rps']:7.0f} req/s  p50 {r['p50']:6.1f} ms  p99 {r['p99']:6.1f} ms  "
                  f"({r['requests']} requests, {r['kb']:.0f} KB each, {r['errors']} errors)", file=sys.stderr)
    finally:
        server.terminate()
        server.wait(timeout=20)

    lines = [
        "## API (issue 6)",
        "",
        f"`{' '.join(['python', 'bench/bench_api.py', *sys.argv[1:]])}` on {platform.machine()} with "
        f"{os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}. Server: `autointerp serve` (one uvicorn process, "
        f"h11); client: {args.concurrency} keep-alive connections from one asyncio process on the same machine. "
        f"Database: {model}, layers {layers}, {harvest['tokens_done']} tokens, {d_mlp} neurons per layer "
        f"(top/bottom 40, random 40, quantile samples per neuron).",
        "",
        "| request | requests/s | p50 ms | p90 ms | p99 ms | max ms | answer size | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(f"| {name} | {r['rps']:.0f} | {r['p50']:.1f} | {r['p90']:.1f} | {r['p99']:.1f} | "
                     f"{r['max']:.1f} | {r['kb']:.0f} KB | {r['errors']} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
