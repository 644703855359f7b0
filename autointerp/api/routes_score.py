"""``POST /api/{model}/score/{layer}/{neuron}``: score a description of a neuron sent by a client -
the neuron page's "test your own explanation" box - exactly as ``autointerp score`` does
(:func:`autointerp.explain.score_text.score_description`), with the same JSON as its ``--json``.
Nothing is stored: the server writes nothing to the database.

Which LLM: a description in the template grammar (``the token "Paris"``) is compiled with no LLM,
so every server scores those. Any other text needs an LLM to compile it into a rule, and the server
has one only when started with ``serve --base-url URL`` (:class:`ServerLLM`); without it such a
request is a 409 that says so, and an endpoint that does not answer is a 503. The embedded local
LLM is deliberately not started on demand: it holds ~2.7 GB of memory and takes ~20 s to start, so
a web request would decide, unseen, to spend both on a machine that may be serving other users; run
``autointerp score`` (which starts and stops it) or a llama.cpp server and ``--base-url`` instead.

The library (and with it the LLM client, ~2 s of imports) is imported on the first request, so
serving stored results starts as fast as before.
"""

from __future__ import annotations

import contextlib
import threading
import urllib.parse
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field, field_validator

from autointerp.api.data import ApiData
from autointerp.api.fastpath import dumps
from autointerp.api.params import Index
from autointerp.api.responses import JSONBytes, json_of
from autointerp.errors import UserError
from autointerp.untrusted import check_unicode

if TYPE_CHECKING:
    from autointerp.explain.simulate import Simulator
    from autointerp.llm.client import LLMClient, LLMSettings


class NoLLM(Exception):  # noqa: N818 - a state of the server, answered with ``status``
    """The description needs an LLM and the server has none (409) or it does not answer (503)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class ServerLLM:
    """The LLM the server compiles descriptions with, from ``serve --base-url`` (None: none).

    The client is made on first use; each use first asks the endpoint for its models - which also
    names the model when ``--simulator-model`` did not - so an endpoint that went away is a 503
    rather than a score row that says "connection error"."""

    def __init__(self, settings: LLMSettings | None) -> None:
        if settings is not None:
            for url in settings.base_urls:
                parts = urllib.parse.urlsplit(url)
                if parts.scheme not in ("http", "https") or not parts.hostname:
                    raise UserError(
                        "--base-url must be an http(s) URL such as http://localhost:8080/v1, not"
                        f" {url!r}."
                    )
        self.settings = settings
        self._client: LLMClient | None = None
        self._lock = threading.Lock()

    @property
    def available(self) -> bool:
        return self.settings is not None

    def _connect(self) -> tuple[LLMClient, str]:
        from autointerp.llm.client import LLMClient

        assert self.settings is not None
        with self._lock:
            if self._client is None:
                # no response cache: the server writes nothing to the database
                self._client = LLMClient(self.settings, None, self.settings.base_urls)
            client = self._client
        try:
            served = client.list_models()
        except UserError as exc:
            raise NoLLM(503, f"The LLM that compiles descriptions does not answer: {exc}") from exc
        model = self.settings.simulator_model or (served[0] if served else None)
        if model is None:
            raise NoLLM(503, "The LLM endpoint lists no model; start serve with --simulator-model.")
        return client, model

    @contextlib.contextmanager
    def simulator(self) -> Iterator[Simulator]:
        """The rule simulator on this server's LLM (:data:`SimulatorSource`)."""
        from autointerp.explain.prompts import load_templates
        from autointerp.explain.simulate import Simulator

        if self.settings is None:
            raise NoLLM(
                409,
                "This server has no LLM to compile this description into a rule: write it in the"
                ' template grammar (such as: the token "Paris"), or start `autointerp serve` with'
                " --base-url, or run `autointerp score`.",
            )
        client, model = self._connect()
        yield Simulator(client, model, load_templates(), "rule")


def _valid_unicode(text: str) -> str:
    """Lone surrogates are valid JSON but not text: refused (422) like any invalid value."""
    try:
        return check_unicode(text, "text")
    except UserError as exc:
        raise ValueError(str(exc)) from None


class ScoreRequest(BaseModel):
    """A description of the neuron to score."""

    text: str = Field(
        min_length=1,
        description=(
            'what the neuron fires on, e.g. `the token "Paris"` (the template grammar, no LLM) or'
            " any phrase (compiled by the server's LLM); at most 500 characters"
        ),
    )

    text_is_unicode = field_validator("text")(classmethod(lambda cls, text: _valid_unicode(text)))


def score_routes(app: FastAPI, data: ApiData, llm: ServerLLM) -> None:
    """``POST /api/{model}/score/{layer}/{neuron}`` and the answer for :class:`NoLLM`."""

    @app.exception_handler(NoLLM)
    async def no_llm(request: Request, exc: NoLLM) -> Response:
        return JSONBytes(dumps({"detail": exc.message}), status_code=exc.status)

    @app.post(
        "/api/{model}/score/{layer}/{neuron}",
        tags=["neurons"],
        summary=(
            "Score your own description of a neuron on its held-out records, beside the stored"
            " explanation's, baseline's and N2G graph's scores (nothing is stored)"
        ),
    )
    def api_score(model: str, layer: Index, neuron: Index, req: ScoreRequest) -> JSONBytes:
        from autointerp.explain.score_text import score_description

        view = data.model(model)
        data.check_neuron(view, layer, neuron)
        result: dict[str, Any] = score_description(
            data.store(), view.name, layer, neuron, req.text, llm.simulator
        )
        return json_of(result)
