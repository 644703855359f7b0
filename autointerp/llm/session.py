"""An LLM client for a run's settings: the configured endpoint(s), or the embedded local server.

``explain``, ``eval`` and ``calibrate`` all need the same thing: a client with the response cache,
talking to the endpoints the settings name, or - when none is named - to a packaged model on a
llama.cpp server started for the run and stopped after it. :class:`LLMSession` does that in two
steps so that every mistake is one sentence before anything slow happens: making it checks the
settings (which model, whether the endpoints answer), entering it opens the cache and starts the
local server, leaving it stops the server and closes the cache.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from autointerp.errors import UserError
from autointerp.llm.cache import LLMCache
from autointerp.llm.client import LLMClient, LLMSettings, check_endpoint
from autointerp.llm.local_server import local_server, resolve_local_llm


def _silent(message: str) -> None:
    """The default ``log``: say nothing."""


class LLMSession:
    """``with LLMSession(settings, cache_path) as llm:`` gives ``llm.client`` and the model names
    to put in the run's config, ``llm.explainer_model`` and ``llm.simulator_model``.

    With endpoints (``settings.base_urls``) the explainer model must be named (the simulator
    defaults to it); ``check_endpoints`` asks each endpoint once first: a malformed URL, or a pool
    where none answers, is refused; an unreachable member of a working pool is ``log``-ged as a
    warning. Without endpoints, ``local_llm`` (or the explainer model, when given) names the
    packaged model the local server runs; it runs one model, so a different simulator model is
    refused, and the names in the config are the ones the server reports. ``prompt_logprobs`` says
    whether the simulator will ask for logprobs (every mode but ``rule`` and ``json``): a local
    server started without them is faster (:func:`autointerp.llm.local_server.local_server`).
    """

    client: LLMClient  # set on entering

    def __init__(
        self,
        settings: LLMSettings,
        cache_path: str | Path,
        *,
        local_llm: str | None = None,
        threads: int | None = None,
        prompt_logprobs: bool = True,
        check_endpoints: bool = False,
        log: Callable[[str], None] = _silent,
    ) -> None:
        self.cache_path = cache_path
        self.threads = threads
        self.prompt_logprobs = prompt_logprobs
        self.log = log
        self.local: str | None = None  # the packaged model the local server runs
        self._stack: contextlib.ExitStack | None = None
        if settings.base_urls:
            if check_endpoints:
                self._check_endpoints(settings)
            if not settings.explainer_model:
                raise UserError(
                    "Name the model on your endpoint with --explainer-model (and "
                    "--simulator-model)."
                )
            self.settings = settings
            self.explainer_model: str = settings.explainer_model
            self.simulator_model: str = settings.simulator_model or settings.explainer_model
            return
        self.local = resolve_local_llm(settings.explainer_model or local_llm).name
        if (
            settings.simulator_model
            and resolve_local_llm(settings.simulator_model).name != self.local
        ):
            raise UserError(
                "The local server runs one model: give the same --explainer-model and "
                "--simulator-model, or point --base-url at a server that has both."
            )
        # the models are the server's; the names given only chose which one it runs
        self.settings = dataclasses.replace(settings, explainer_model=None, simulator_model=None)
        self.explainer_model = self.simulator_model = ""  # the server's, once it is up

    def _check_endpoints(self, settings: LLMSettings) -> None:
        """A pool works while one server answers; a malformed URL is a mistake anywhere."""
        unreachable: list[str] = []
        for url in settings.base_urls:
            try:
                check_endpoint(url, settings.api_key, settings.timeout)
            except UserError as exc:
                if str(exc).startswith("--base-url must be") or len(settings.base_urls) == 1:
                    raise
                unreachable.append(str(exc))
        if len(unreachable) == len(settings.base_urls):
            raise UserError("No LLM server of the pool answers: " + " ".join(unreachable))
        for message in unreachable:
            self.log(f"warning: {message} The other servers take its requests.")

    def __enter__(self) -> LLMSession:
        stack = contextlib.ExitStack()
        try:
            if self.local is not None:
                self.log(f"Starting the local LLM server ({self.local}) ...")
            cache = LLMCache(self.cache_path)
            stack.callback(cache.close)
            if self.local is None:
                base_url: str | tuple[str, ...] = self.settings.base_urls
            else:
                base_url, served = stack.enter_context(
                    local_server(
                        self.local, threads=self.threads, prompt_logprobs=self.prompt_logprobs
                    )
                )
                self.explainer_model = self.simulator_model = served
            self.client = LLMClient(self.settings, cache, base_url)
        except BaseException:
            stack.close()
            raise
        self._stack = stack
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:  # an error goes on to the server's cleanup (which keeps its log)
            stack.__exit__(kind, error, traceback)
