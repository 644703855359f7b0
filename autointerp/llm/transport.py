"""The HTTP client under every LLM request: one deadline for the whole request, and a cap on the
size of its reply, compressed or not.

Why: an HTTP client's timeouts are per network operation (connect, each read), so a server that
sends its headers and then one byte a second never times out, and explain (or the endpoint check)
hung for as long as the server liked. And a reply is decoded whole: a 306 KB gzip that expands to
300 MB took explain to a 2.1 GB peak. Here:

* **A deadline per request** (``--llm-timeout``): every connect, read and write of one request
  waits at most until the request's deadline (:class:`_DeadlineStream`, under the connection pool),
  headers and body alike; past it the request is a timeout like any other - retried, then recorded
  as a failure.
* **A capped reply**: the body is read, and decoded (gzip, deflate, ...), in small pieces inside the
  deadline, and more than :data:`MAX_RESPONSE_BYTES` either way is :class:`ResponseTooLarge`
  (recorded as invalid output), before it is all in memory.

The openai client gets this as its ``http_client`` (:func:`http_client`): httpx2's client with our
transport wherever it would use its own, so proxies from the environment still apply.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpcore2
import httpx2
import openai

#: The largest LLM reply read, in bytes, before and after decoding: far above any answer (an echo
#: simulation with logprobs for a few thousand tokens is a few MB).
MAX_RESPONSE_BYTES = 64 << 20
#: Compressed bytes are decoded this many at a time, so one piece expands to at most ~1000x this.
DECODE_PIECE_BYTES = 8 << 10

_deadlines = threading.local()  # this thread's request deadline (time.monotonic()), or None


class ResponseTooLarge(Exception):  # noqa: N818 - named for what happened, as InvalidOutput is
    """The reply (or what it decodes to) is over :data:`MAX_RESPONSE_BYTES`."""


@contextlib.contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    """Every network operation of this thread gets until ``seconds`` from now."""
    _deadlines.at = time.monotonic() + seconds
    try:
        yield
    finally:
        _deadlines.at = None


def _left(timeout: float | None, late: type[Exception]) -> float | None:
    """``timeout`` shortened to what is left of this thread's deadline; ``late`` when none is."""
    at = getattr(_deadlines, "at", None)
    if at is None:
        return timeout
    left = at - time.monotonic()
    if left <= 0:
        raise late("the request's deadline passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore2.NetworkStream):
    """A connection whose every operation ends by the current request's deadline."""

    def __init__(self, stream: httpcore2.NetworkStream):
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _left(timeout, httpcore2.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _left(timeout, httpcore2.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self,
        ssl_context: Any,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore2.NetworkStream:
        left = _left(timeout, httpcore2.ConnectTimeout)
        return _DeadlineStream(self._stream.start_tls(ssl_context, server_hostname, left))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore2.NetworkBackend):
    """The pool's network backend, with :class:`_DeadlineStream` connections."""

    def __init__(self, backend: httpcore2.NetworkBackend):
        self._backend = backend

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore2.NetworkStream:
        left = _left(timeout, httpcore2.ConnectTimeout)
        stream = self._backend.connect_tcp(host, port, left, local_address, socket_options)
        return _DeadlineStream(stream)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore2.NetworkStream:
        left = _left(timeout, httpcore2.ConnectTimeout)
        return _DeadlineStream(self._backend.connect_unix_socket(path, left, socket_options))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


class _Pieces(httpx2.SyncByteStream):
    """A response body in pieces of at most ``size`` bytes, at most ``limit`` of them in all."""

    def __init__(self, stream: httpx2.SyncByteStream, size: int, limit: int):
        self._stream, self._size, self._limit = stream, size, limit

    def __iter__(self) -> Iterator[bytes]:
        seen = 0
        for chunk in self._stream:
            seen += len(chunk)
            if seen > self._limit:
                raise ResponseTooLarge(f"the response is over {self._limit >> 20} MiB")
            for i in range(0, len(chunk), self._size):
                yield chunk[i : i + self._size]

    def close(self) -> None:
        self._stream.close()


class DeadlineTransport(httpx2.HTTPTransport):
    """httpx2's transport with a deadline per request and a capped, pre-read reply."""

    def __init__(self, seconds: float, max_bytes: int = MAX_RESPONSE_BYTES, **options: Any):
        super().__init__(**options)
        self.seconds = seconds
        self.max_bytes = max_bytes
        pool = self._pool  # ConnectionPool, or HTTPProxy/SOCKSProxy (subclasses of it)
        pool._network_backend = _DeadlineBackend(pool._network_backend)

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        with _deadline(self.seconds):
            response = super().handle_request(request)
            try:
                body = self._read(response)
            finally:
                response.close()
        headers = [
            (name, value)
            for name, value in response.headers.raw
            if name.lower() not in (b"content-encoding", b"content-length", b"transfer-encoding")
        ]
        return httpx2.Response(
            response.status_code,
            headers=headers,
            content=body,
            extensions=response.extensions,
            request=request,
        )

    def _read(self, response: httpx2.Response) -> bytes:
        """The whole body, decoded, within the deadline and the size cap."""
        assert isinstance(response.stream, httpx2.SyncByteStream)
        pieces = _Pieces(response.stream, DECODE_PIECE_BYTES, self.max_bytes)
        decoding = httpx2.Response(response.status_code, headers=response.headers, stream=pieces)
        parts: list[bytes] = []
        size = 0
        for part in decoding.iter_bytes():
            size += len(part)
            if size > self.max_bytes:
                raise ResponseTooLarge(f"the response decodes to over {self.max_bytes >> 20} MiB")
            parts.append(part)
        return b"".join(parts)


class _DeadlineClient(openai.DefaultHttpxClient):
    """openai's default HTTP client (its limits, redirects and proxies from the environment), with
    :class:`DeadlineTransport` as every transport it makes."""

    def __init__(self, seconds: float, max_bytes: int, **options: Any):
        self._deadline_options = {"seconds": seconds, "max_bytes": max_bytes}
        super().__init__(**options)

    def _init_transport(self, *args: Any, transport: Any = None, **options: Any) -> Any:
        if transport is not None:
            return transport
        return DeadlineTransport(**self._deadline_options, **options)

    def _init_proxy_transport(self, proxy: Any, **options: Any) -> Any:
        return DeadlineTransport(**self._deadline_options, proxy=proxy, **options)


def http_client(seconds: float, max_bytes: int = MAX_RESPONSE_BYTES) -> httpx2.Client:
    """The ``http_client`` for ``openai.OpenAI``: each request ends by ``seconds`` after it starts,
    its reply capped at ``max_bytes``."""
    return _DeadlineClient(seconds, max_bytes)
