"""Every LLM call goes through here: the ``openai`` client against any OpenAI-compatible endpoint,
with a cache, retries and a token ledger.

Why this shape:

* **One client, any server.** OpenAI, vLLM, Ollama and llama.cpp all speak the same HTTP API, so the
  pipeline only needs ``base_url``, ``api_key`` and model names. When none is configured,
  :mod:`autointerp.llm.local_server` starts a local llama.cpp server and hands its URL here.
* **Failures are recorded, never scored.** Timeouts, connection errors, 429 and 5xx are retried with
  exponential backoff (tenacity) for a bounded number of attempts; structured output that fails
  validation is retried at a higher temperature. What still fails raises :class:`LLMFailure`
  carrying the reason, which the caller stores as a failed row - never as a number.
* **Reruns cost nothing.** Every successful response is cached in SQLite keyed by (model, endpoint,
  prompt hash, params); a cached response is re-validated before use and counts zero tokens in the
  ledger.
* **A pool of servers, one logical endpoint.** Several base URLs (vLLM on a few GPUs, llama.cpp on a
  few machines) serve the same model: each request goes to the server with the fewest requests in
  flight, a server that fails (unreachable, timeout, 429, 5xx) is rested with exponential backoff
  while the others take its requests, and a call fails only when every server has failed it
  ``max_attempts`` times. The cache key holds no URL, so a response from one server is a cache hit
  for all of them. With one URL this is exactly the single-server behaviour.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import openai
from tenacity import Retrying, retry_if_exception

from autointerp.errors import UserError
from autointerp.llm.cache import LLMCache
from autointerp.llm.transport import ResponseTooLarge, http_client

T = TypeVar("T")


class InvalidOutput(Exception):
    """The server answered, but not in the shape we asked for (bad JSON, wrong count,
    out-of-range values)."""


class LLMFailure(Exception):
    """A call that failed after every retry; ``reason`` is what gets stored with the failed row."""

    def __init__(self, reason: str, attempts: int, transient: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.attempts = attempts
        self.transient = transient  # the server was unreachable/overloaded (not a wrong answer)


def _retryable(exc: BaseException) -> bool:
    """Transient faults worth another try: timeouts, dropped connections, 429, 5xx, and malformed
    output."""
    if isinstance(
        exc,
        InvalidOutput | openai.APITimeoutError | openai.APIConnectionError | openai.RateLimitError,
    ):
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code >= 500 or exc.status_code == 429
    return False


def describe_error(exc: BaseException) -> str:
    """A one-line reason for a failed row, e.g. ``HTTP 500: ...`` or ``invalid output: expected
    12 values``."""
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
        """Dollars for this usage under a price table ``{model: {"prompt": $/1M, "completion":
        $/1M}}``."""
        if not prices or model not in prices:
            return None
        p = prices[model]
        return (
            self.prompt_tokens * float(p.get("prompt", 0))
            + self.completion_tokens * float(p.get("completion", 0))
        ) / 1e6


@dataclass
class LLMSettings:
    """Where and how to call the LLM. ``base_url=None`` means: start the embedded local server."""

    base_url: str | Sequence[str] | None = (
        None  # one URL, or a pool of servers that serve the same models
    )
    api_key: str | None = None
    explainer_model: str | None = None
    simulator_model: str | None = None
    timeout: float = 300.0
    max_attempts: int = 4
    backoff: float = 1.0  # seconds; doubles per attempt (capped at 30 s)
    concurrency: int = 1
    prices: dict[str, dict[str, float]] | None = field(default=None)

    @property
    def base_urls(self) -> tuple[str, ...]:
        """Every configured endpoint, in the order given (empty: none configured)."""
        return split_base_urls(self.base_url)

    @classmethod
    def from_env(cls, **overrides: Any) -> LLMSettings:
        """Flags win over ``OPENAI_BASE_URLS`` (comma-separated) / ``OPENAI_BASE_URL`` /
        ``OPENAI_API_KEY`` / ``AUTOINTERP_EXPLAINER_MODEL`` / ``AUTOINTERP_SIMULATOR_MODEL``."""
        values: dict[str, Any] = {
            "base_url": (
                split_base_urls(os.environ.get("OPENAI_BASE_URLS"))
                or os.environ.get("OPENAI_BASE_URL")
                or None
            ),
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


def split_base_urls(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"a,b"``, ``["a", "b,c"]`` or ``None`` as a tuple of URLs, duplicates dropped, order
    kept."""
    if not value:
        return ()
    parts = [value] if isinstance(value, str) else list(value)
    urls = [u.strip() for part in parts for u in str(part).split(",") if u.strip()]
    return tuple(dict.fromkeys(urls))


def load_prices(path: str | None) -> dict[str, dict[str, float]] | None:
    """A price table file: JSON ``{"model": {"prompt": dollars per 1M tokens, "completion":
    ...}}``."""
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            table = json.load(f)
    except (OSError, ValueError) as exc:
        raise UserError(f"Cannot read the price table {path}: {exc}") from exc
    ok = isinstance(table, dict) and all(
        isinstance(v, dict) and all(isinstance(x, int | float) for x in v.values())
        for v in table.values()
    )
    if not ok:
        raise UserError(
            f'The price table {path} must look like {{"model": {{"prompt": 0.15, "completion":'
            " 0.6}}."
        )
    return table


def check_endpoint(base_url: str, api_key: str | None, timeout: float) -> None:
    """Ask the server once, before any work, whether it is there: a malformed or unreachable
    ``--base-url`` is one sentence and exit status 2, not a failed row for every neuron and a run
    that "succeeds" with nothing done. Any HTTP answer other than an authentication refusal counts
    as reachable (some servers have no /models)."""
    parts = urllib.parse.urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(
            f"--base-url must be an http(s) URL such as http://localhost:8000/v1, not {base_url!r}."
        )
    seconds = min(timeout, 15.0)  # the whole check, headers and body, ends by then
    client = openai.OpenAI(
        base_url=base_url,
        api_key=api_key or "not-needed",
        timeout=seconds,
        max_retries=0,
        http_client=http_client(seconds),
    )
    try:
        client.models.list()
    except (openai.APIConnectionError, openai.APITimeoutError) as exc:
        raise UserError(
            f"The LLM server at {base_url} does not answer ({describe_error(exc)}); "
            "start it or fix --base-url."
        ) from exc
    except openai.AuthenticationError as exc:
        raise UserError(
            f"The LLM server at {base_url} refused the API key "
            f"({describe_error(exc)}); set --api-key or OPENAI_API_KEY."
        ) from exc
    except Exception:  # noqa: BLE001, S110 - it answered; whether it lists models does not matter
        pass


def request_key(model: str, endpoint: str, payload: dict[str, Any]) -> str:
    """Cache key: the model, the endpoint kind, and a hash of the full request (prompt and every
    parameter)."""
    blob = json.dumps(
        {"model": model, "endpoint": endpoint, "payload": payload},
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@dataclass
class Endpoint:
    """One server of the pool and what the pool knows of it."""

    url: str
    """The base URL, e.g. ``http://gpu3:8000/v1``."""
    client: openai.OpenAI
    """The openai client bound to that URL (its own retries off: the pool retries)."""
    in_flight: int = 0
    """Requests sent to it and not yet answered: the pool sends the next one to the least busy
    server."""
    consecutive_failures: int = 0
    """Transient failures since its last good answer; the rest doubles with each."""
    rested_until: float = 0.0
    """``time.monotonic()`` before which no request goes to it, unless every server is resting."""
    usage: Usage = field(default_factory=Usage)
    """Tokens this server spent (the ledger per endpoint)."""
    failures: int = 0
    """Transient failures it caused, over the client's life."""


class LLMClient:
    """Cached, retried calls to one OpenAI-compatible server or a pool of them. Thread-safe: the
    pool's state and the ledger are guarded by one lock, and the cache serialises its own access."""

    def __init__(
        self, settings: LLMSettings, cache: LLMCache | None, base_url: str | Sequence[str]
    ):
        urls = split_base_urls(base_url)
        if not urls:
            raise UserError(
                "No LLM endpoint: give --base-url (or OPENAI_BASE_URL / OPENAI_BASE_URLS)."
            )
        self.settings = settings
        self.base_url = urls[0]
        self.cache = cache
        # max_retries=0: tenacity owns retrying, so attempts are bounded and counted in one place
        self.endpoints = [
            Endpoint(
                url,
                openai.OpenAI(
                    base_url=url,
                    api_key=settings.api_key or "not-needed",
                    timeout=settings.timeout,
                    max_retries=0,
                    http_client=http_client(settings.timeout),  # a deadline per request
                ),
            )
            for url in urls
        ]
        self.client = self.endpoints[0].client
        self._lock = threading.Lock()
        self._turn = 0  # ties between equally busy servers go round the pool
        self.usage = Usage()

    def _pick(self, tries: dict[str, int]) -> Endpoint | None:
        """The server for the next attempt: among those this call may still try, a rested one only
        when all are resting (the one whose rest ends first), else the one with the fewest requests
        in flight."""
        limit = self.settings.max_attempts
        candidates = [e for e in self.endpoints if tries.get(e.url, 0) < limit]
        if not candidates:
            return None
        now = time.monotonic()
        awake = [e for e in candidates if e.rested_until <= now]
        if not awake:
            return min(candidates, key=lambda e: e.rested_until)
        self._turn += 1
        order = {
            e.url: (i - self._turn) % len(self.endpoints) for i, e in enumerate(self.endpoints)
        }
        return min(awake, key=lambda e: (e.in_flight, tries.get(e.url, 0), order[e.url]))

    def _rest(self, endpoint: Endpoint) -> None:
        """A transient failure: keep requests away from this server for ``backoff * 2^(n-1)`` s
        (at most 30)."""
        endpoint.consecutive_failures += 1
        endpoint.failures += 1
        pause = min(30.0, self.settings.backoff * 2 ** (endpoint.consecutive_failures - 1))
        endpoint.rested_until = time.monotonic() + pause

    def call(
        self,
        endpoint: str,
        model: str,
        payload: dict[str, Any],
        parse: Callable[[dict[str, Any]], T],
        retry_payload: Callable[[int], dict[str, Any]] | None = None,
    ) -> tuple[T, Usage]:
        """Send ``payload`` to ``endpoint`` ("chat" or "completions") and ``parse`` the response
        dict.

        ``parse`` raises :class:`InvalidOutput` for a response of the wrong shape; that attempt is
        retried with ``retry_payload(attempt)`` merged in (e.g. a higher temperature, since a
        deterministic retry would repeat itself). Transient faults rest the server that caused them
        and the next attempt goes to another one. Returns the parsed value and the tokens spent.
        Raises :class:`LLMFailure` after ``max_attempts`` wrong answers, or once every server has
        failed ``max_attempts`` times.
        """
        usage = Usage()
        tries: dict[str, int] = {}  # attempts of this call per server
        last_error: dict[str, str] = {}
        invalid = 0
        attempt_no = 0
        chosen: list[Endpoint | None] = [None]

        def wait(_state: Any) -> float:  # the next server's remaining rest (0 when it is awake)
            with self._lock:
                chosen[0] = self._pick(tries)
                target = chosen[0]
            return 0.0 if target is None else max(0.0, target.rested_until - time.monotonic())

        def give_up(_state: Any) -> bool:
            with self._lock:
                return invalid >= self.settings.max_attempts or self._pick(tries) is None

        retrying = Retrying(
            stop=give_up, wait=wait, retry=retry_if_exception(_retryable), reraise=True
        )
        try:
            for attempt in retrying:
                with attempt:
                    attempt_no += 1
                    with self._lock:
                        target = chosen[0] or self._pick(tries)
                        assert (
                            target is not None
                        )  # give_up() stops the loop before no server is left
                        target.in_flight += 1
                    tries[target.url] = tries.get(target.url, 0) + 1
                    body = dict(payload)
                    if attempt_no > 1 and retry_payload is not None:
                        body.update(retry_payload(attempt_no))
                    try:
                        value = self._one(target, endpoint, model, body, parse, usage)
                    except InvalidOutput:
                        invalid += 1
                        raise
                    except Exception as exc:
                        last_error[target.url] = describe_error(exc)
                        if _retryable(exc):
                            with self._lock:
                                self._rest(target)
                        raise
                    finally:
                        with self._lock:
                            target.in_flight -= 1
                    with self._lock:
                        target.consecutive_failures = 0
                        target.rested_until = 0.0
                    return value, usage
        except Exception as exc:  # noqa: BLE001 - every failure becomes a recorded reason
            reason = describe_error(exc)
            if len(last_error) > 1 and not isinstance(exc, InvalidOutput):
                reason = "every endpoint failed: " + "; ".join(
                    f"{u}: {r}" for u, r in last_error.items()
                )
            if attempt_no > 1:
                reason += f" (after {attempt_no} attempts)"
            transient = _retryable(exc) and not isinstance(exc, InvalidOutput)
            raise LLMFailure(reason, attempt_no, transient) from exc
        raise AssertionError("unreachable")

    def _one(
        self,
        server: Endpoint,
        endpoint: str,
        model: str,
        body: dict[str, Any],
        parse: Callable[[dict[str, Any]], T],
        usage: Usage,
    ) -> T:
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
        api = server.client.chat.completions if endpoint == "chat" else server.client.completions
        try:
            raw = api.create(model=model, **body)
        except (
            ValueError,
            openai.APIResponseValidationError,
        ) as exc:  # a 200 whose body is not the API's JSON
            raise InvalidOutput(
                f"malformed response ({type(exc).__name__}: {str(exc)[:100]})"
            ) from exc
        except ResponseTooLarge as exc:  # or one too large to read (a gzip bomb, an endless body)
            raise InvalidOutput(f"malformed response: {exc}") from exc
        if not hasattr(raw, "model_dump"):  # a non-JSON body (an HTML page) comes back as text
            raise InvalidOutput(f"malformed response: not the API's JSON but {str(raw)[:80]!r}")
        response = raw.model_dump()
        spent = response.get("usage") or {}
        call_usage = Usage(
            int(spent.get("prompt_tokens") or 0), int(spent.get("completion_tokens") or 0), 1, 0
        )
        usage.add(call_usage)
        with self._lock:
            self.usage.add(call_usage)
            server.usage.add(call_usage)
        value = parse(response)  # raises InvalidOutput before anything is cached
        if self.cache is not None:
            self.cache.put(
                key,
                model,
                endpoint,
                body,
                response,
                call_usage.prompt_tokens,
                call_usage.completion_tokens,
            )
        return value

    def endpoint_usage(self) -> list[dict[str, Any]]:
        """The ledger per server: tokens, calls and transient failures (for the run summary)."""
        with self._lock:
            return [
                {
                    "url": e.url,
                    "prompt_tokens": e.usage.prompt_tokens,
                    "completion_tokens": e.usage.completion_tokens,
                    "calls": e.usage.calls,
                    "failures": e.failures,
                }
                for e in self.endpoints
            ]

    def absorb(self, ledger: list[dict[str, Any]]) -> None:
        """Add another client's :meth:`endpoint_usage` to this one's (a Ray worker's calls, counted
        in the driver's ledger); servers this client does not know are ignored."""
        with self._lock:
            by_url = {e.url: e for e in self.endpoints}
            for row in ledger:
                e = by_url.get(row["url"])
                if e is None:
                    continue
                used = Usage(row["prompt_tokens"], row["completion_tokens"], row["calls"], 0)
                e.usage.add(used)
                self.usage.add(used)
                e.failures += int(row["failures"])

    def list_models(self) -> list[str]:
        """Model ids served by the first server that answers (every server of a pool serves the
        same ones)."""
        errors = []
        for e in self.endpoints:
            try:
                return [m.id for m in e.client.models.list().data]
            except openai.OpenAIError as exc:
                errors.append(f"{e.url}: {describe_error(exc)}")
        raise UserError("No LLM server answers: " + "; ".join(errors))
