"""The JSON response type every API route and error handler answers with.

Routes return bytes already encoded by :func:`autointerp.api.fastpath.dumps` (compact, NaN as null),
the encoder that also made the cached neuron answers, instead of letting FastAPI encode a dict: one
encoder, so an answer is the same bytes whether it came from the cache or was assembled now.
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import Response

from autointerp.api.fastpath import dumps


class JSONBytes(Response):
    media_type = "application/json"


def json_of(obj: Any) -> JSONBytes:
    return JSONBytes(dumps(obj))
