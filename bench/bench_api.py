"""API benchmark: neuron JSON requests per second and latency percentiles over loopback with a
concurrent client.

The server is started the way a user starts it (``autointerp serve`` in its own process); the client
is a minimal asyncio HTTP/1.1 keep-alive client in this process (httpx would cost more CPU per
request than the server, and both share the same cores). Phases, each for ``--seconds`` in all:

* ``neuroscope cold`` - every request is a neuron not asked for before (nothing cached: SQLite read
  + JSON encode), with the default answer (10 examples per kind) and with ``limit=1000`` (every
  example: the answer before the default was cut);
* ``neuroscope warm`` - requests cycle over 200 neurons (served from the per-run byte cache);
* ``stats`` and ``all`` (stats, examples, graph, explanation, similar, weights read fresh every
  time) on random neurons.

With ``--compare-http``, a second server runs with ``--http h11 --loop asyncio`` (uvicorn's
pure-Python stack) beside the default one (httptools + uvloop when installed). With
``--compare-stored``, a second server reads a copy of the database without the stored page answers
(the ``answers`` table, written by ``harvest --answers``), so it assembles every cold answer itself,
as before that table existed; the benchmark stores the answers in ``--db`` first if they are
missing. Phases that are compared run interleaved, in ``--rounds`` slices each, so a machine whose
load changes hurts both sides alike; the machine is shared, so read the ratios.

Usage: ``python bench/bench_api.py --out bench/results/api.md`` (harvests smollm2-135m layers 3-6
over 8,192 tokens into ``--db`` first if that file does not exist).
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
from collections.abc import Iterable
from pathlib import Path
from typing import Any

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
    subprocess.run(
        [
            sys.executable,
            "-m",
            "autointerp",
            "harvest",
            "--model",
            model,
            "--layers",
            layers,
            "--tokens",
            str(tokens),
            "--db",
            str(db),
            "--no-progress",
        ],
        cwd=REPO,
        check=True,
    )


async def _request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str
) -> tuple[int, int]:
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n\r\n".encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    body = await reader.readexactly(length)
    return status, len(body)


async def run_phase(
    port: int, paths: Iterable[str], seconds: float, concurrency: int
) -> dict[str, Any]:
    """``concurrency`` keep-alive connections, each sending its next request as soon as the previous
    answer arrived, until ``seconds`` have passed; every latency is recorded."""
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
    return {
        "latencies": np.array(latencies),
        "sizes": np.array(sizes),
        "seconds": elapsed,
        "errors": errors,
    }


def without_answers(db: Path) -> Path:
    """Store ``db``'s page answers if missing, and return a copy of it without them."""
    import sqlite3

    from autointerp.cli.harvest import store_answers
    from autointerp.store import Store

    harvests = [r["id"] for r in Store(db).runs() if r["stage"] == "harvest"]
    store_answers(str(db), harvests, progress=False)  # complete, unsharded runs only
    copy = db.with_name(db.stem + "-assembled.db")
    copy.unlink(missing_ok=True)
    with sqlite3.connect(db) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
        dst.execute("delete from answers")
    return copy


def start_server(db: Path, extra: list[str]) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "autointerp",
        "serve",
        "--db",
        str(db),
        "--port",
        str(port),
        *extra,
    ]
    server = subprocess.Popen(cmd, cwd=REPO, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server, port
        except OSError:
            if server.poll() is not None or time.time() > deadline:
                raise SystemExit(
                    f"server did not start: {server.stderr.read() if server.stderr else ''}"
                ) from None
            time.sleep(0.2)


def merge(parts: list[dict[str, Any]]) -> dict[str, float]:
    """One phase's slices as one measurement (latencies pooled)."""
    lat = np.concatenate([p["latencies"] for p in parts]) * 1000
    seconds = sum(p["seconds"] for p in parts)
    sizes = np.concatenate([p["sizes"] for p in parts])
    return {
        "requests": len(lat),
        "seconds": seconds,
        "rps": len(lat) / seconds,
        "p50": float(np.percentile(lat, 50)),
        "p90": float(np.percentile(lat, 90)),
        "p99": float(np.percentile(lat, 99)),
        "max": float(lat.max()),
        "errors": sum(p["errors"] for p in parts),
        "kb": float(sizes.mean()) / 1024,
    }


def cpu_per_answer(db: Path, model: str, neurons: list[tuple[int, int]]) -> dict[str, float]:
    """Mean CPU seconds to build a cold neuroscope answer in this process, default answer and every
    example, on alternate neurons (no HTTP: what the answer itself costs)."""
    from autointerp.api.data import NEUROSCOPE_LIMIT, ApiData

    data = ApiData(db)
    view = data.model(model)
    spent = {"default": 0.0, "all": 0.0}
    counts = {"default": 0, "all": 0}
    for i, (layer, neuron) in enumerate(neurons):
        key, limit = ("default", NEUROSCOPE_LIMIT) if i % 2 == 0 else ("all", 1000)
        run_id = data.check_neuron(view, layer, neuron)
        t0 = time.process_time()
        data.neuroscope_bytes(view, layer, neuron, run_id, None, limit)
        spent[key] += time.process_time() - t0
        counts[key] += 1
    return {k: spent[k] / max(counts[k], 1) for k in spent}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", default="/tmp/autointerp-bench-api.db")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--layers", default="3-6")
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument(
        "--rounds", type=int, default=4, help="interleaved slices per compared phase (default 4)"
    )
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument(
        "--cpu-neurons",
        type=int,
        default=2000,
        help="neurons for the in-process CPU time per answer (default 2000)",
    )
    ap.add_argument(
        "--compare-stored",
        action="store_true",
        help="also serve a copy of the database without stored page answers, interleaved",
    )
    ap.add_argument(
        "--compare-http",
        action="store_true",
        help="also run a server with --http h11 --loop asyncio, interleaved with the default one",
    )
    ap.add_argument("--out", default=None, help="write a markdown section here")
    args = ap.parse_args()

    db = Path(args.db)
    ensure_db(db, args.model, args.layers, args.tokens)
    info = json.loads(
        subprocess.run(
            [sys.executable, "-m", "autointerp", "runs", "--db", str(db), "--json"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    harvest = next(r for r in info if r["stage"] == "harvest" and r["status"] == "complete")
    model, layers = harvest["model"], harvest["config"]["layers"]
    stacks = {"default": (db, [])} | (
        {"h11/asyncio": (db, ["--http", "h11", "--loop", "asyncio"])} if args.compare_http else {}
    )
    if args.compare_stored:
        stacks["assembled"] = (without_answers(db), [])
    servers = {name: start_server(path, extra) for name, (path, extra) in stacks.items()}
    auto = (
        "httptools" if _importable("httptools") else "h11",
        "uvloop" if _importable("uvloop") else "asyncio",
    )
    try:
        any_port = next(iter(servers.values()))[1]
        d_mlp = json.loads(
            subprocess.run(
                ["curl", "-s", f"http://127.0.0.1:{any_port}/api/{model}"],
                capture_output=True,
                text=True,
            ).stdout
        )["d_mlp"]
        rng = random.Random(0)
        everyone = [(layer, n) for layer in layers for n in range(d_mlp)]
        rng.shuffle(everyone)
        hot_set = everyone[:200]
        paths: dict[str, Any] = {}
        for name, (_, port) in servers.items():
            # cold: each server walks the shuffled neurons once, the two answer sizes alternating
            cold_default = iter(f"/api/{model}/neuroscope/{la}/{n}" for la, n in everyone[0::2])
            cold_all = iter(
                f"/api/{model}/neuroscope/{la}/{n}?limit=1000" for la, n in everyone[1::2]
            )
            warm = [f"/api/{model}/neuroscope/{la}/{n}" for la, n in hot_set]
            asyncio.run(
                run_phase(port, warm, 60, args.concurrency)
            )  # the warm set is asked for once first
            paths[name] = {
                "neuroscope, cold (never asked before), default answer": cold_default,
                "neuroscope, cold, limit=1000 (every example)": cold_all,
                "neuroscope, warm (200 neurons)": iter(warm * 5000),
                "stats, random neurons": iter(
                    f"/api/{model}/stats/{la}/{n}"
                    for la, n in (rng.choice(everyone) for _ in range(400000))
                ),
                "all services, random neurons": iter(
                    f"/api/{model}/all/{la}/{n}"
                    for la, n in (rng.choice(everyone) for _ in range(400000))
                ),
            }
        parts: dict[tuple[str, str], list[dict[str, Any]]] = {}
        phases = list(next(iter(paths.values())))
        for _ in range(args.rounds):
            for phase in phases:
                for name, (_, port) in servers.items():
                    r = asyncio.run(
                        run_phase(
                            port, paths[name][phase], args.seconds / args.rounds, args.concurrency
                        )
                    )
                    parts.setdefault((name, phase), []).append(r)
        results = {key: merge(value) for key, value in parts.items()}
        for (name, phase), r in results.items():
            print(
                f"{name:<12} {phase:<55} {r['rps']:7.0f} req/s  p50 {r['p50']:6.1f} ms  "
                f"p99 {r['p99']:6.1f} ms  ({r['requests']} requests, {r['kb']:.0f} KB each, "
                f"{r['errors']} errors)",
                file=sys.stderr,
            )
    finally:
        for server, _ in servers.values():
            server.terminate()
            server.wait(timeout=20)

    load = os.getloadavg()
    lines = [
        "## API",
        "",
        (
            f"`{' '.join(['python', 'bench/bench_api.py', *sys.argv[1:]])}` on {platform.machine()}"
            f" with {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M')}, load average"
            f" {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} at the end (1/5/15 min). Server:"
            f" `autointerp serve` (one uvicorn process; default stack here: {auto[0]} + {auto[1]});"
            f" client: {args.concurrency} keep-alive connections from one asyncio process on the"
            f" same machine; each phase {args.seconds:g} s in {args.rounds} interleaved slices."
            f" Database: {model}, layers {layers}, {harvest['tokens_done']} tokens, {d_mlp} neurons"
            " per layer (top/bottom 40, random 40, quantile samples per neuron)."
        ),
        "",
        (
            "| server | request | requests/s | p50 ms | p90 ms | p99 ms | max ms | answer size "
            "| errors |"
        ),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (name, phase), r in results.items():
        lines.append(
            f"| {name} | {phase} | {r['rps']:.0f} | {r['p50']:.1f} | {r['p90']:.1f} | "
            f"{r['p99']:.1f} | {r['max']:.1f} | {r['kb']:.0f} KB | {r['errors']} |"
        )
    cpu = cpu_per_answer(db, model, everyone[: args.cpu_neurons])
    lines += [
        "",
        (
            "Server CPU time per cold neuroscope answer, measured in-process"
            " (`ApiData.neuroscope_bytes`, CPU seconds of this process, so less sensitive to the"
            f" machine's load than requests/s; {len(everyone[: args.cpu_neurons])} neurons never"
            " asked before, the two sizes on alternate neurons): default answer"
            f" **{cpu['default'] * 1000:.2f} ms**, every example (limit=1000)"
            f" **{cpu['all'] * 1000:.2f} ms** ({cpu['all'] / cpu['default']:.1f}x)."
        ),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


if __name__ == "__main__":
    main()
