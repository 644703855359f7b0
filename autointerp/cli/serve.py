"""``autointerp serve``: the JSON API and the web pages, one uvicorn server."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from autointerp.cli.common import (
    Commands,
    add_db_option,
    add_device_options,
    db_path,
    default_of,
    finite,
    load_subject,
    whole,
)
from autointerp.errors import UserError

commands = Commands()


@commands.add(
    "serve",
    help="serve the JSON API and web pages (neuron, layer/Layerscope, search)",
    description=(
        "One server (FastAPI + uvicorn) for the JSON API (/api/..., spec at /openapi.json, "
        "docs at /docs) and the pages (/ lists the models). Reads the database while "
        "pipelines write to it. Binds to 127.0.0.1 unless --host is given."
    ),
)
def serve_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="interface to bind (default 127.0.0.1: this machine only)",
    )
    p.add_argument("--port", type=whole(), default=8000, help="port (default 8000)")
    from autointerp.api.app import create_app

    max_chars = default_of(create_app, "max_chars")
    p.add_argument(
        "--max-chars",
        type=whole(),
        default=max_chars,
        help=f"longest text the live activation endpoints accept (default {max_chars})",
    )
    p.add_argument(
        "--log-level",
        default="warning",
        choices=["critical", "error", "warning", "info", "debug"],
        help="uvicorn log level (default warning)",
    )
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.add_argument(
        "--cors",
        action="append",
        metavar="ORIGIN",
        help=(
            "let pages from this web origin (e.g. http://localhost:3000) read the API "
            "from a browser; repeatable (default: none, so other websites cannot read a "
            "local server)"
        ),
    )
    p.add_argument(
        "--share-recent-prompts",
        action="store_true",
        help=(
            "list every client's recent Layerscope prompts to everyone (default: only "
            "to the browser that ran them)"
        ),
    )
    p.add_argument(
        "--timeout",
        type=finite,
        default=30.0,
        help="seconds a client may take to send its whole request body before a 408 (default 30)",
    )
    from autointerp.api.server import HEADER_SECONDS

    p.add_argument(
        "--header-timeout",
        type=finite,
        default=HEADER_SECONDS,
        help=(
            "seconds a client may take to send a request's headers before it is disconnected"
            f" (default {HEADER_SECONDS:g})"
        ),
    )
    p.add_argument(
        "--http",
        default="auto",
        choices=["auto", "h11", "httptools"],
        help="HTTP parser (default auto: httptools when installed, else h11)",
    )
    p.add_argument(
        "--loop",
        default="auto",
        choices=["auto", "asyncio", "uvloop"],
        help="event loop (default auto: uvloop when installed, else asyncio)",
    )
    p.add_argument(
        "--base-url",
        action="append",
        default=None,
        help=(
            "OpenAI-compatible endpoint that compiles descriptions into rules for the neuron page's"
            ' "test your own explanation" box (POST /api/{model}/score/...); repeat it for a pool'
            ' (default: none, so only descriptions in the template grammar, such as: the token "X",'
            " are scored)"
        ),
    )
    p.add_argument("--api-key", default=None, help="its API key (default: $OPENAI_API_KEY)")
    p.add_argument(
        "--simulator-model",
        default=None,
        help="the model on --base-url that compiles (default: the first one it lists)",
    )
    add_db_option(p)
    add_device_options(p)
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    """The JSON API and web pages, on loopback unless --host says otherwise."""
    from autointerp.api import create_app
    from autointerp.api.server import serve

    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be between 0 and 65535, not {args.port}.")
    if args.max_chars < 1:
        raise UserError("--max-chars must be at least 1.")
    for option, seconds in (("--timeout", args.timeout), ("--header-timeout", args.header_timeout)):
        if seconds <= 0:
            raise UserError(f"{option} must be a positive number of seconds, not {seconds:g}.")

    def loader(name: str) -> Any:  # live views run the subject model where --device/--dtype say
        return load_subject(name, progress=False, args=args)

    app = create_app(
        db_path(args),
        loader=loader,
        max_chars=args.max_chars,
        cors_origins=args.cors or (),
        share_recent=args.share_recent_prompts,
        body_seconds=args.timeout,
        llm=_scoring_llm(args),
    )
    _check_port_free(args.host, args.port)  # before saying "serving": a busy port is one sentence
    print(
        f"serving {db_path(args)} on http://{args.host}:{args.port}/  (API docs: /docs)",
        file=sys.stderr,
    )
    # Slow clients: an idle keep-alive connection is closed after 5 s, one that has not sent its
    # request's headers within --header-timeout is closed, a body that has not arrived whole within
    # --timeout gets 408 (the app's BodyLimit), and at most 64 requests are served at once (more get
    # 503); see autointerp.api.server.
    serve(
        app,
        host=args.host,
        port=args.port,
        http=args.http,
        loop=args.loop,
        header_seconds=args.header_timeout,
        log_level=args.log_level,
        access_log=args.access_log,
    )
    return 0


def _scoring_llm(args: argparse.Namespace) -> Any:
    """The LLM settings of --base-url (None without it: the server has no LLM). Only the flag turns
    it on - $OPENAI_BASE_URL is not read, as a server should not start calling an LLM unasked - and
    a request waits at most a minute, tried twice."""
    if not args.base_url:
        return None
    from autointerp.llm.client import LLMSettings

    return LLMSettings.from_env(
        base_url=args.base_url,
        api_key=args.api_key,
        explainer_model=args.simulator_model,
        simulator_model=args.simulator_model,
        timeout=60.0,
        max_attempts=2,
    )


def _check_port_free(host: str, port: int) -> None:
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UserError(
            f"--host {host!r} is not an address of this machine ({exc.strerror})."
        ) from exc
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as exc:
            raise UserError(
                f"Cannot listen on {host}:{port}: {exc.strerror} (another server "
                "there? choose another --port)."
            ) from exc
