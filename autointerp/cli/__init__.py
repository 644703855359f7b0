"""The `autointerp` command line: a thin layer over the library (as sqlite-utils does it).

Every subcommand explains itself with --help, prints machine-readable output with --json, and turns
user mistakes into one sentence on stderr with exit status 2 (no traceback, nothing written).

Where things are: this module has :func:`main` (parsing, dispatch, and how errors become exit
statuses) and the top-level parser; :mod:`.common` the shared option helpers; one module per
group of commands, in the order ``autointerp --help`` lists them (:data:`COMMAND_MODULES`). In
those, each command is a function that adds its options - registered with its one-line help by
``@commands.add`` - right above the handler that runs it, which makes one library call.

Option defaults that a stage's config dataclass defines are read from it
(:func:`.common.default_of`), which means importing the stage (and torch). So :func:`build_parser`
adds the options of the command being run only; the others get just their one-line help, which is
all ``autointerp --help`` shows, and ``autointerp rank`` stays as quick to start as before.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sqlite3
import sys
from collections.abc import Sequence

from autointerp import __version__
from autointerp.cli.common import db_path
from autointerp.errors import UserError
from autointerp.untrusted import check_environment, check_unicode

EPILOG = """examples:
  autointerp setup                                   # fetch the default model and corpus (once)
  autointerp run smollm2-135m --layers 1 --dry-run     # a whole layer: plan and cost estimate
  autointerp harvest --model smollm2-135m --layers 0-3 --tokens 20000
  autointerp neuron smollm2-135m 2/17                # stats and top examples, coloured
  autointerp activations smollm2-135m 2/17 --text "def f(x): return x"
  autointerp harvest --model gemma-3-270m --shard 0/2 --db part0.db   # ... and 1/2 elsewhere, then:
  autointerp merge all.db part0.db part1.db
  autointerp export graphml smollm2-135m --all       # every N2G graph -> graphs/smollm2-135m/
  autointerp report smollm2-135m                     # best-explained neurons, scores, similar ones
"""

#: The modules under autointerp.cli that define commands, in the order `autointerp --help` lists
#: their commands.
COMMAND_MODULES = (
    "setup",
    "run",
    "harvest",
    "rank",
    "explain",
    "score",
    "graphs",
    "report",
    "show",
    "serve",
    "search",
    "weights",
    "evaluation",
)


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad option as one ``error: ...`` line (exit 2) like every other
    mistake, instead of the usage block followed by the error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(2)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `autointerp` parser. With ``command``, only that command's options are added (the
    others are listed with their help, nothing more); with None, every command's."""
    parser = _Parser(
        prog="autointerp",
        description=(
            "Explain the MLP neurons of transformer language models: harvest max-activating"
            " examples, build N2G graphs, write and score explanations, and browse the results."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"autointerp {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        for cmd in importlib.import_module(f"autointerp.cli.{name}").commands:
            if command is None or command == cmd.name:
                cmd.add_options(sub.add_parser(cmd.name, help=cmd.help, **cmd.parser_options))
            else:
                sub.add_parser(cmd.name, help=cmd.help)
    return parser


def _check_arguments(args: argparse.Namespace) -> None:
    """Every text argument must be valid Unicode (argv bytes that are not UTF-8 arrive as lone
    surrogates)."""
    for name, value in vars(args).items():
        values = value if isinstance(value, list | tuple) else [value]
        for item in values:
            if isinstance(item, str):
                positional = (
                    "model",
                    "neuron",
                    "query",
                    "format",
                    "out",
                    "shards",
                    "model_a",
                    "model_b",
                    "description",
                )
                flag = name if name in positional else "--" + name.replace("_", "-")
                check_unicode(item, f"The argument {flag}", from_bytes=True)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:  # before the parser, whose defaults read some of them
        check_environment()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # the command is the first word that is not an option (the top level has only --help/--version)
    parser = build_parser(next((a for a in argv if not a.startswith("-")), ""))
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a bad option (already reported in one line)
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    try:
        _check_arguments(args)
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except sqlite3.Error as exc:  # a corrupted file, a full disk, read-only media: not a bug
        where = f" {db_path(args)}" if hasattr(args, "db") else ""
        print(
            f"error: the database{where} cannot be used: {exc} (nothing was changed by the "
            "failed step).",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    # `autointerp neuron ... --json | head` closed the pipe early: not an error
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:  # a full disk, a folder where a file should be, no permission
        where = f": {exc.filename}" if exc.filename else ""
        print(
            f"error: {exc.strerror or exc}{where} (nothing was changed by the failed step).",
            file=sys.stderr,
        )
        return 1
