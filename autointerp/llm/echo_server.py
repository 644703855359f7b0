"""``python -m autointerp.llm.echo_server``: llama-cpp-python's OpenAI-compatible server, with one
fast path added.

Everything (``/v1/models``, ``/v1/chat/completions``, ``/v1/completions``) is llama-cpp-python's own
server (``llama_cpp.server.app.create_app``), except prompt scoring: a ``/v1/completions`` request
with ``echo`` and ``logprobs`` and ``max_tokens`` <= 1, which is what all-at-once simulation sends.
llama-cpp-python 0.3.36 answers that by sorting the whole vocabulary (152k entries for Qwen) in
Python at every prompt token: 48 s for a 230-token prompt with the 0.5B model here. This path
evaluates the prompt once (reusing the cached prefix) and takes the top-k of each row with numpy
instead, in well under a second. It also follows OpenAI's convention, which llama-cpp-python's own
path shifts by one: ``top_logprobs[i]`` is the distribution the model predicted *for* token ``i``
(``None`` for the first token). Nothing is generated on this path; ``text`` is the prompt.

``--no-prompt-logprobs`` starts it for callers that never ask for logprobs (the ``rule`` simulator):
without ``logits_all`` the server skips the vocabulary projection of every prompt token but the
last, and it keeps a RAM cache of evaluated prompts (:data:`PREFIX_CACHE_BYTES`), so the explainer's
and the rule compiler's long few-shot prefixes are evaluated once, not again after every call of the
other kind. With ``logits_all`` such a cache is not affordable: each saved state would carry the
logits of every prompt token (~1 GB for a 1,500-token prompt). Logprob requests are then refused
with a 400 that says why.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from typing import Any

import numpy as np

#: : The prompt cache's capacity without prompt logprobs: llama.cpp states (the key/value cache of
#: the : evaluated prompt: ~45 MB for a 1,500-token explain prompt with the 1.5B, ~15 MB for a rule
#: prompt), : least recently used first out.
PREFIX_CACHE_BYTES = 1 << 30


def slim_prompt_cache(capacity_bytes: int) -> Any:
    """llama-cpp-python's RAM prompt cache, keeping only the last row of each state's logits.

    The stock cache stores with every state a copy of the logits buffer - one batch of rows
    (512 x 152k floats, 311 MB) without ``logits_all`` - and does not count it against its
    capacity: the server grew by 311 MB per request (measured, 16 requests). Restoring needs no
    more than the last row: ``load_state`` broadcasts it into the buffer, and generation evaluates
    at least the last prompt token again before it samples."""
    from llama_cpp import LlamaRAMCache
    from llama_cpp.llama import LlamaState

    class SlimPromptCache(LlamaRAMCache):  # type: ignore[misc]
        def __setitem__(self, key: Any, value: LlamaState) -> None:
            value.scores = value.scores[-1:].copy()
            super().__setitem__(key, value)

    return SlimPromptCache(capacity_bytes=capacity_bytes)


def score_prompt(llama: Any, prompt: str, k: int) -> dict[str, Any]:
    """Per-token top-k logprobs of ``prompt`` in OpenAI's legacy completions ``logprobs`` format."""
    tokens = llama.tokenize(prompt.encode("utf-8"), add_bos=True, special=False)
    if len(tokens) > llama.n_ctx():
        raise ValueError(f"The prompt is {len(tokens)} tokens; the context holds {llama.n_ctx()}.")
    # reuse the evaluated prefix (the few-shot header is shared by every record)
    cached = list(llama.input_ids[: llama.n_tokens])
    keep = 0
    for a, b in zip(cached, tokens[:-1], strict=False):
        if a != b:
            break
        keep += 1
    llama.n_tokens = keep
    llama.eval(tokens[keep:])
    scores = np.asarray(llama.scores[: len(tokens)], dtype=np.float32)
    bos = llama.token_bos()
    start = 1 if tokens and tokens[0] == bos else 0
    out_tokens: list[str] = []
    offsets: list[int] = []
    token_logprobs: list[float | None] = []
    top_logprobs: list[dict[str, float] | None] = []
    prefix = b""
    for i in range(start, len(tokens)):
        piece = llama.detokenize([tokens[i]])
        offsets.append(len(prefix.decode("utf-8", errors="ignore")))
        prefix += piece
        out_tokens.append(piece.decode("utf-8", errors="ignore"))
        if i == 0:
            token_logprobs.append(None)
            top_logprobs.append(None)
            continue
        row = scores[i - 1]
        m = float(row.max())
        lse = m + float(np.log(np.exp(row - m).sum()))
        idx = np.argpartition(-row, k)[:k] if k < row.shape[0] else np.arange(row.shape[0])
        idx = idx[np.argsort(-row[idx])]
        top: dict[str, float] = {}
        for j in idx.tolist():
            text = llama.detokenize([j]).decode("utf-8", errors="ignore")
            top.setdefault(text, float(row[j]) - lse)
        top_logprobs.append(top)
        token_logprobs.append(float(row[tokens[i]]) - lse)
    return {
        "tokens": out_tokens,
        "text_offset": offsets,
        "token_logprobs": token_logprobs,
        "top_logprobs": top_logprobs,
        "n_prompt": len(tokens),
    }


def build_app(
    model: str, alias: str, n_ctx: int, threads: int, prompt_logprobs: bool = True
) -> Any:
    import contextlib

    from fastapi import Request
    from fastapi.responses import JSONResponse
    from llama_cpp.server.app import create_app, get_llama_proxy
    from llama_cpp.server.settings import ModelSettings, ServerSettings
    from starlette.concurrency import run_in_threadpool

    app = create_app(
        server_settings=ServerSettings(),
        model_settings=[
            ModelSettings(
                model=model,
                model_alias=alias,
                n_ctx=n_ctx,
                n_threads=threads,
                n_threads_batch=threads,
                n_batch=512,
                verbose=False,
                logits_all=prompt_logprobs,
            )
        ],
    )

    cache_ready = prompt_logprobs  # the prompt cache is set on the model at the first request

    @app.middleware("http")
    async def fast_echo(request: Request, call_next: Any) -> Any:
        nonlocal cache_ready
        if request.method == "POST" and not cache_ready:
            async with contextlib.asynccontextmanager(get_llama_proxy)() as proxy:
                proxy(None).set_cache(slim_prompt_cache(PREFIX_CACHE_BYTES))
            cache_ready = True
        if request.method != "POST" or not request.url.path.endswith("/v1/completions"):
            return await call_next(request)
        raw = await request.body()
        try:
            body = json.loads(raw)
        except ValueError:
            return await call_next(request)
        wants = (
            isinstance(body, dict)
            and body.get("echo")
            and body.get("logprobs") is not None
            and int(body.get("max_tokens") or 0) <= 1
            and isinstance(body.get("prompt"), str)
        )
        if not wants:
            return await call_next(request)
        if not prompt_logprobs:
            return JSONResponse(
                {
                    "error": {
                        "message": "this server was started without prompt logprobs "
                        "(--no-prompt-logprobs)",
                        "type": "invalid_request_error",
                    }
                },
                status_code=400,
            )
        k = max(1, min(int(body["logprobs"]), 100))
        async with contextlib.asynccontextmanager(get_llama_proxy)() as proxy:
            llama = proxy(body.get("model"))
            try:
                scored = await run_in_threadpool(score_prompt, llama, body["prompt"], k)
            except ValueError as exc:
                return JSONResponse(
                    {"error": {"message": str(exc), "type": "invalid_request_error"}},
                    status_code=400,
                )
        n_prompt = scored.pop("n_prompt")
        return JSONResponse(
            {
                "id": f"cmpl-{uuid.uuid4().hex}",
                "object": "text_completion",
                "created": int(time.time()),
                "model": body.get("model") or alias,
                "choices": [
                    {
                        "text": body["prompt"],
                        "index": 0,
                        "logprobs": scored,
                        "finish_reason": "length",
                    }
                ],
                "usage": {
                    "prompt_tokens": n_prompt,
                    "completion_tokens": 0,
                    "total_tokens": n_prompt,
                },
            }
        )

    return app


def main() -> None:
    import uvicorn

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="GGUF file")
    p.add_argument("--alias", required=True, help="model name clients use")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--n-ctx", type=int, default=4096)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--no-prompt-logprobs",
        action="store_true",
        help="no logprobs at all; cache evaluated prompts instead (see the module docstring)",
    )
    args = p.parse_args()
    app = build_app(args.model, args.alias, args.n_ctx, args.threads, not args.no_prompt_logprobs)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
