"""Fuzz every JSON endpoint from the server's own OpenAPI spec with schemathesis: whatever the
parameters and bodies, the answer is never a 5xx (bad input is a 4xx that says what is wrong). The
app is the real one over a real harvest database, with the real (tiny) subject model behind the live
endpoints. Beyond the schema's own strategies, a quarter of the cases carry lone surrogates in their
texts or integers past 64 bits in their integer parameters."""

from __future__ import annotations

import json
import urllib.parse
from collections import Counter
from pathlib import Path

import pytest
import schemathesis
from apidb import build_api_db
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from autointerp.api import create_app
from autointerp.errors import UserError
from autointerp.models import SubjectModel
from autointerp.records import SERVICES

EXAMPLES = 60  # per operation: 11 operations, ~20 s in all on 2 cores
M = "tiny-gated"


@pytest.fixture(scope="module")
def api_schema(tiny_gated: SubjectModel, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    db = build_api_db(tiny_gated, tmp_path_factory.mktemp("fuzz"))

    def loader(name: str) -> SubjectModel:
        if name != tiny_gated.name:
            raise UserError(f"no weights for {name}")
        return tiny_gated

    app = create_app(db, loader=loader, max_chars=300)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    schema.test_client = TestClient(
        app
    )  # for bodies schemathesis' client cannot encode (lone surrogates)
    return schema


HUGE = (
    2**63,
    -(2**63) - 1,
    2**64,
    10**30,
)  # past SQLite's integers, and past any float's exactness


def _hostile(case, kind: str, huge: int) -> None:  # type: ignore[no-untyped-def]
    """Widen the generated inputs beyond what the schema's strategies make: lone surrogates in every
    text (valid JSON, invalid Unicode) and integers past SQLite's 64 bits in every integer
    parameter."""
    if kind == "surrogate":
        if isinstance(case.body, dict):
            for name, value in list(case.body.items()):
                if isinstance(value, str) or name == "text":
                    case.body[name] = f"{value}"[:10] + "\ud800x\udcff"
        for params in (case.query or {},):
            for name, value in list(params.items()):
                if isinstance(value, str):
                    params[name] = value[:10] + "\ud800"
    elif kind == "huge":
        for params in (case.path_parameters or {}, case.query or {}):
            for name in list(params):
                if name in ("layer", "neuron", "offset", "limit"):
                    params[name] = huge
        if isinstance(case.body, dict):
            for name in ("layer", "neuron"):
                if name in case.body:
                    case.body[name] = huge


def _steer(case, real: bool, layer: int, neuron: int, service: str) -> None:  # type: ignore[no-untyped-def]
    """Point most cases at things that exist (the harvested model, its layers, neurons near the
    edge, real services): purely random names only ever reach the 404 for an unknown model."""
    if not real:
        return
    path = case.path_parameters or {}
    for name, value in (("model", M), ("layer", layer), ("neuron", neuron), ("service", service)):
        if name in path:
            path[name] = value
    if isinstance(case.body, dict):
        for name, value in (("layer", layer), ("neuron", neuron)):
            if isinstance(case.body.get(name), int):
                case.body[name] = value


def _sendable(path: str) -> str:
    """A path as an HTTP client puts it on the wire: control characters and spaces percent-encoded
    (httpx refuses to build a URL holding them raw)."""
    return urllib.parse.quote(path, safe="/%:@!$&'()*+,;=-._~")


def test_no_input_makes_a_server_error(api_schema) -> None:  # type: ignore[no-untyped-def]
    """Every operation, ``EXAMPLES`` cases each - valid and invalid by the schema (schemathesis'
    positive and negative modes), derandomised so a failure reproduces."""
    failures: list[str] = []
    statuses: Counter[int] = Counter()
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 10  # the whole API is in the spec
    modes = st.sampled_from([GenerationMode.POSITIVE, GenerationMode.NEGATIVE])

    for operation in operations:

        @given(
            case=modes.flatmap(lambda mode, op=operation: op.as_strategy(generation_mode=mode)),
            real=st.sampled_from([False, True, True, True]),
            layer=st.sampled_from([0, 1, 1, 7]),
            neuron=st.sampled_from([0, 1, 2, 23, 24]),
            service=st.sampled_from(SERVICES * 2 + ("x",)),
            hostile=st.sampled_from(["none", "none", "surrogate", "huge"]),
            huge=st.sampled_from(HUGE),
        )
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def fuzz(
            case,
            real: bool,
            layer: int,
            neuron: int,
            service: str,
            hostile: str,  # type: ignore[no-untyped-def]
            huge: int,
        ) -> None:
            _steer(case, real, layer, neuron, service)
            _hostile(case, hostile, huge)
            if hostile == "surrogate":  # JSON text with \uXXXX escapes, as a browser sends it
                body = case.body if isinstance(case.body, dict | list | str | int | float) else None
                # in the URL: the surrogate's (invalid) UTF-8 bytes, percent-encoded, as a raw
                # client can send
                query = "&".join(
                    f"{urllib.parse.quote(str(k))}="
                    f"{urllib.parse.quote(str(v).encode('utf-8', 'surrogatepass'))}"
                    for k, v in (case.query or {}).items()
                )
                response = api_schema.test_client.request(
                    case.method,
                    _sendable(case.formatted_path) + (f"?{query}" if query else ""),
                    content=None if body is None else json.dumps(body),
                    headers={"content-type": "application/json"},
                )
            else:
                try:
                    response = case.call()
                except Exception as exc:  # noqa: BLE001 - httpx will not put raw control characters in
                    # a URL; a client sends them percent-encoded
                    if type(exc).__name__ != "InvalidURL":
                        raise
                    query = urllib.parse.urlencode(case.query or {}, doseq=True)
                    response = api_schema.test_client.request(
                        case.method,
                        _sendable(case.formatted_path) + (f"?{query}" if query else ""),
                        content=(
                            None
                            if not isinstance(case.body, dict | list)
                            else json.dumps(case.body)
                        ),
                        headers={"content-type": "application/json"},
                    )
            statuses[response.status_code] += 1
            if response.status_code >= 500:
                failures.append(
                    f"{case.method} {case.formatted_path} query={case.query}"
                    f" body={case.body!r:.200} -> {response.status_code} {response.text[:200]}"
                )

        fuzz()
    assert not failures, "\n".join(failures[:20])
    assert statuses[200] > len(operations) * 5, (
        statuses
    )  # the fuzz reached real answers, not only 404s


def test_fuzz_database_exists(tmp_path: Path) -> None:
    """The fuzzed app refuses to start on a missing database rather than serving 5xx later."""
    with pytest.raises(UserError):
        create_app(tmp_path / "none.db")
