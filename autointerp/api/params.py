"""Request parameter types shared by the JSON routes (:mod:`autointerp.api.app` and its
``routes_*`` modules) and the pages (:mod:`autointerp.api.pages`).

Every integer parameter is bounded: SQLite integers overflow past 2**63, and no model has more
layers, neurons or examples than this.
"""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import Path as FastPath

from autointerp.ranges import MAX_INDEX  # one bound for the CLI and the API

Index = Annotated[int, FastPath(ge=-MAX_INDEX, le=MAX_INDEX)]
"""A layer or neuron number in a URL path."""

CLIENT_COOKIE = "autointerp_client"
"""Which browser ran which Layerscope prompts (they are listed only to it): set by the JSON route,
read by the layer page too."""

CLIENT_ID = re.compile("[0-9a-f]{24}")
"""What that cookie holds when this server set it (``secrets.token_hex(12)``); any other value is
replaced by a new id rather than kept: clients choose what they send."""
