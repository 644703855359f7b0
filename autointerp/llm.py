"""Every LLM call goes through here: the ``openai`` client against any OpenAI-compatible endpoint, with a cache,
retries and a token ledger.

Why this shape:

* **One client, any server.** OpenAI, vLLM, Ollama and llama.cpp all speak the same HTTP API, so the pipeline only
  needs ``base_url``, ``api_key`` and model names. When none is configured, :mod:`autointerp.llm_server` starts a
  local llama.cpp server and hands its URL here.
* **Failures are recorded, never scored.** Timeouts, connection errors, 429 and 5xx are retried with exponential
  backoff (tenacity) for a bounded number of attempts; structured output that fails validation is retried at a
  higher temperature. What still fails raises :class:`LLMFailure` carrying the reason, which the caller stores as a
  failed row - never as a number.
* **Reruns cost nothing.** Every successful response is cached in SQLite keyed by (model, endpoint, prompt hash,
  params); a cached response is re-validated before use and counts zero tokens in the ledger.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import openai
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from autointerp.errors import UserError
from autointerp.store import LLMCache

T = TypeVar("T")


class InvalidOutput(Exception):
    """The server answered, but not in the shape we asked for (bad JSON, wrong count, out-of-range values)."""


class LLMFailure(Exception):
    """A call that failed after every retry; ``reason`` is what gets stored with the failed row."""

    def __init__(self, reason: str, attempts: int, transient: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.attempts = attempts
        self.transient = transient  # the server was unreachable/overloaded (not a wrong answer)


def _retryable(exc: BaseException) -> bool:
    """Transient faults worth another try: timeouts, dropped connections, 429, 5xx, and malformed output."""
    if isinstance(exc, InvalidOutput | openai.APITimeoutError | openai.APIConnectionError | openai.RateLimitError):
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code >= 500 or exc.status_code == 429
    return False


def describe_error(exc: BaseException) -> str:
    """A one-line reason for a failed row, e.g. ``HTTP 500: ...`` or ``invalid output: expected 12 values``."""
    if isinstance(exc, openai.APIStatusError):
        body = str(exc.message or "")[:200]
        return f"HTTP {exc.status_code}: {body}"
    if isinstance(exc, openai.APITimeoutError):
        return "timeout: the server did not answer in time"
    if isinstance(exc, openai.APIConnectionError):
        return f"connection error: {exc.__cause__ or exc}"[:300]
    if isinstance(exc, InvalidOutput):
        return f"invalid output: {exc}"[:300]
    return f"{type(exc).__name__}: {exc}"[:300]


@dataclass
class Usage:
    """Tokens spent on real (uncached) calls; cached calls add nothing."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    calls: int = 0
    cached_calls: int = 0

    def add(self, other: Usage) -> None:
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.calls += other.calls
        self.cached_calls += other.cached_calls

    def cost(self, model: str, prices: dict[str, dict[str, float]] | None) -> float | None:
        """Dollars for this usage under a price table ``{model: {"prompt": $/1M, "completion": $/1M}}``."""
        if not prices or model not in prices:
            return None
        p = prices[model]
        return (self.prompt_tokens * float(p.get("prompt", 0)) + self.completion_tokens * float(p.get("completion", 0))
                ) / 1e6


@dataclass
class LLMSettings:
    """Where and how to call the LLM. ``base_url=None`` means: start the embedded local server."""

    base_url: str | None = None
    api_key: str | None = None
    explainer_model: str | None = None
    simulator_model: str | None = None
    timeout: float = 300.0
    max_attempts: int = 4
    backoff: float = 1.0  # seconds; doubles per attempt (capped at 30 s)
    concurrency: int = 1
    prices: dict[str, dict[str, float]] | None = field(default=None)

    @classmethod
    def from_env(cls, **overrides: Any) -> LLMSettings:
        """Flags win over ``OPENAI_BASE_URL`` / ``OPENAI_API_KEY`` / ``AUTOINTERP_EXPLAINER_MODEL`` /
        ``AUTOINTERP_SIMULATOR_MODEL``."""
        values: dict[str, Any] = {
            "base_url": os.environ.get("OPENAI_BASE_URL") or None,
            "api_key": os.environ.get("OPENAI_API_KEY") or None,
            "explainer_model": os.environ.get("AUTOINTERP_EXPLAINER_MODEL") or None,
            "simulator_model": os.environ.get("AUTOINTERP_SIMULATOR_MODEL") or None,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        if values.get("max_attempts", 4) < 1:
            raise UserError("--max-attempts must be at least 1.")
        if values.get("concurrency", 1) < 1:
            raise UserError("--concurrency must be at least 1.")
        if values.get("timeout", 1) <= 0:
            raise UserError("--llm-timeout must be positive.")
        return cls(**values)


def load_prices(path: str | None) -> dict[str, dict[str, float]] | None:
    """A price table file: JSON ``{"model": {"prompt": dollars per 1M tokens, "completion": ...}}``."""
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            table = json.load(f)
    except (OSError, ValueError) as exc:
        raise UserError(f"Cannot read the price table {path}: {exc}") from exc
    ok = isinstance(table, dict) and all(
        isinstance(v, dict) and all(isinstance(x, int | float) for x in v.values()) for v in table.values())
    if not ok:
        raise UserError(f'The price table {path} must look like {{"model": {{"prompt": 0.15, "completion": 0.6}}}}.')
    return table


def check_endpoint(base_url: str, api_key: str | None, timeout: float) -> None:
    """Ask the server once, before any work, whether it is there: a malformed or unreachable
    ``--base-url`` is one sentence and exit status 2, not a failed row for every neuron and a run
    that "succeeds" with nothing done. Any HTTP answer other than an authentication refusal counts
    as reachable (some servers have no /models)."""
    parts = urllib.parse.urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(f"--base-url must be an http(s) URL such as http://localhost:8000/v1, not "
                        f"{base_url!r}.")
    client = openai.OpenAI(base_url=base_url, api_key=api_key or "not-needed",
                           timeout=min(timeout, 15.0), max_retries=0)
    try:
        client.models.list()
    except (openai.APIConnectionError, openai.APITimeoutError) as exc:
        raise UserError(f"The LLM server at {base_url} does not answer ({describe_error(exc)}); "
                        "start it or fix --base-url.") from exc
    except openai.AuthenticationError as exc:
        raise UserError(f"The LLM server at {base_url} refused the API key "
                        f"({describe_error(exc)}); set --api-key or OPENAI_API_KEY.") from exc
    except Exception:  # noqa: BLE001, S110 - it answered; whether it lists models does not matter
        pass


def request_key(model: str, endpoint: str, payload: dict[str, Any]) -> str:
    """Cache key: the model, the endpoint kind, and a hash of the full request (prompt and every parameter)."""
    blob = json.dumps({"model": model, "endpoint": endpoint, "payload": payload}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class LLMClient:
    """Cached, retried calls to an OpenAI-compatible server. Thread-safe: the cache serialises its own access."""

    def __init__(self, settings: LLMSettings, cache: LLMCache | None, base_url: str):
        self.settings = settings
        self.base_url = base_url
        self.cache = cache
        # max_retries=0: tenacity owns retrying, so attempts are bounded and counted in one place
        self.client = openai.OpenAI(base_url=base_url, api_key=settings.api_key or "not-needed",
                                    timeout=settings.timeout, max_retries=0)
        self._lock = threading.Lock()
        self.usage = Usage()

    def call(self, endpoint: str, model: str, payload: dict[str, Any], parse: Callable[[dict[str, Any]], T],
             retry_payload: Callable[[int], dict[str, Any]] | None = None) -> tuple[T, Usage]:
        """Send ``payload`` to ``endpoint`` ("chat" or "completions") and ``parse`` the response dict.

        ``parse`` raises :class:`InvalidOutput` for a response of the wrong shape; that attempt is retried with
        ``retry_payload(attempt)`` merged in (e.g. a higher temperature, since a deterministic retry would repeat
        itself). Returns the parsed value and the tokens spent. Raises :class:`LLMFailure` after the last attempt.
        """
        usage = Usage()
        attempt_no = 0
        retrying = Retrying(
            stop=stop_after_attempt(self.settings.max_attempts),
            wait=wait_exponential(multiplier=self.settings.backoff, max=30),
            retry=retry_if_exception(_retryable),
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    attempt_no += 1
                    body = dict(payload)
                    if attempt_no > 1 and retry_payload is not None:
                        body.update(retry_payload(attempt_no))
                    return self._one(endpoint, model, body, parse, usage), usage
        except Exception as exc:  # noqa: BLE001 - every failure becomes a recorded reason
            reason = describe_error(exc)
            if attempt_no > 1:
                reason += f" (after {attempt_no} attempts)"
            transient = _retryable(exc) and not isinstance(exc, InvalidOutput)
            raise LLMFailure(reason, attempt_no, transient) from exc
        raise AssertionError("unreachable")

    def _one(self, endpoint: str, model: str, body: dict[str, Any], parse: Callable[[dict[str, Any]], T],
             usage: Usage) -> T:
        key = request_key(model, endpoint, body)
        cached = self.cache.get(key) if self.cache is not None else None
        if cached is not None:
            try:
                value = parse(cached)
                usage.cached_calls += 1
                return value
            except InvalidOutput:
                pass  # a cache entry from an older parser: ask again
        if endpoint not in ("chat", "completions"):
            raise ValueError(endpoint)
        api = self.client.chat.completions if endpoint == "chat" else self.client.completions
        try:
            raw = api.create(model=model, **body)
        except (ValueError, openai.APIResponseValidationError) as exc:  # a 200 whose body is not the API's JSON
            raise InvalidOutput(f"malformed response ({type(exc).__name__}: {str(exc)[:100]})") from exc
        if not hasattr(raw, "model_dump"):  # a non-JSON body (an HTML page) comes back as text
            raise InvalidOutput(f"malformed response: not the API's JSON but {str(raw)[:80]!r}")
        response = raw.model_dump()
        spent = response.get("usage") or {}
        call_usage = Usage(int(spent.get("prompt_tokens") or 0), int(spent.get("completion_tokens") or 0), 1, 0)
        usage.add(call_usage)
        with self._lock:
            self.usage.add(call_usage)
        value = parse(response)  # raises InvalidOutput before anything is cached
        if self.cache is not None:
            self.cache.put(key, model, endpoint, body, response, call_usage.prompt_tokens,
                           call_usage.completion_tokens)
        return value

    def list_models(self) -> list[str]:
        try:
            return [m.id for m in self.client.models.list().data]
        except openai.OpenAIError as exc:
            raise UserError(f"The LLM server at {self.base_url} does not answer: {describe_error(exc)}") from exc
