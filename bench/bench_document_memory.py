"""Benchmark peak memory of a harvest whose corpus is one huge single-line document, at two document
sizes and the same token budget: memory must not grow with the document (it is tokenized a piece at
a time and only as far as the budget), nor the database (only the text that was read is stored).

Each size runs the real CLI (`autointerp harvest`) in its own child process; the peak resident set
size is the child's (``ru_maxrss`` of a wrapper that runs nothing else).

    .venv/bin/python bench/bench_document_memory.py                        # 5 MB and 45 MB,
    --tokens 2000 .venv/bin/python bench/bench_document_memory.py --sizes 1,5 --out
    bench/results/document-memory.md
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WRAPPER = """
import resource, subprocess, sys, json
proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(json.dumps({"rc": proc.returncode, "stderr": proc.stderr[-500:],
                  "maxrss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""
SENTENCE = (
    "The quick brown fox jumps over the lazy dog while 42 cats sleep in the warm afternoon sun. "
)


def run(size_mb: int, folder: Path, model: str, tokens: int) -> dict[str, object]:
    doc = folder / f"one_{size_mb}mb.txt"
    with doc.open("w") as f:  # one line: no newline anywhere
        f.write(SENTENCE * (size_mb * 1_000_000 // len(SENTENCE)))
    db = folder / f"one_{size_mb}mb.db"
    cmd = [
        sys.executable,
        "-m",
        "autointerp",
        "harvest",
        "--model",
        model,
        "--corpus",
        str(doc),
        "--layers",
        "0",
        "--tokens",
        str(tokens),
        "--ctx-len",
        "64",
        "--no-progress",
        "--db",
        str(db),
    ]
    started = time.time()
    out = json.loads(
        subprocess.run(
            [sys.executable, "-c", WRAPPER, *cmd], capture_output=True, text=True, check=True
        ).stdout
    )
    if out["rc"] != 0:
        raise SystemExit(f"harvest failed: {out['stderr']}")
    seconds = round(time.time() - started, 1)
    return {
        "size_mb": size_mb,
        "peak_rss_mb": round(out["maxrss_kb"] / 1024),
        "seconds": seconds,
        "db_mb": round(db.stat().st_size / 1e6, 2),
        "doc_bytes": doc.stat().st_size,
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", default="5,45", help="document sizes in MB (default 5,45)")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tokens", type=int, default=2000)
    ap.add_argument("--out", default=None, help="also write the Markdown section here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="autointerp-docmem-") as tmp:
        rows = [run(int(s), Path(tmp), args.model, args.tokens) for s in args.sizes.split(",")]
    lines = [
        (
            f"One single-line document, `autointerp harvest --model {args.model} --layers 0"
            f" --tokens {args.tokens}` ({platform.processor() or platform.machine()},"
            f" {time.strftime('%Y-%m-%d')}):"
        ),
        "",
        "| document | peak RSS | wall time (incl. model load) | database |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['size_mb']} MB | {r['peak_rss_mb']} MB | {r['seconds']} s | {r['db_mb']} MB |"
        for r in rows
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
