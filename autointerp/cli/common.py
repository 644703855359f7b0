"""What the command modules share: the command registry, option helpers (--db, --device/--dtype,
checked numbers), option defaults read from the config dataclasses, and small output helpers.

Nothing here imports a pipeline stage at module level: ``autointerp rank`` and ``autointerp --help``
must not pay for importing torch. A command's options that read a stage's config import it inside
the function that adds them, which only runs for the command being run (see
:func:`autointerp.cli.build_parser`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import json
import math
import sys
from collections.abc import Callable, Iterator
from typing import Any

from autointerp.errors import UserError
from autointerp.ranges import MAX_INDEX
from autointerp.untrusted import read_text


# ------------------------------------------------------------------------------------ the registry
@dataclasses.dataclass(frozen=True)
class Command:
    """One subcommand: its name and one-line help (always shown by ``autointerp --help``), the
    rest of ``add_parser``'s arguments, and the function that adds its options and handler."""

    name: str
    help: str
    add_options: Callable[[argparse.ArgumentParser], None]
    parser_options: dict[str, Any]


class Commands(list[Command]):
    """The commands of one module, in the order they are defined (the order `--help` lists)."""

    def add(
        self, name: str, help: str, **parser_options: Any
    ) -> Callable[
        [Callable[[argparse.ArgumentParser], None]], Callable[[argparse.ArgumentParser], None]
    ]:
        """Decorator for the function that adds a command's options (and ``func``, its handler)."""

        def register(
            add_options: Callable[[argparse.ArgumentParser], None],
        ) -> Callable[[argparse.ArgumentParser], None]:
            self.append(Command(name, help, add_options, parser_options))
            return add_options

        return register


# ------------------------------------------------------------------------------------ defaults
def default_of(config: Any, name: str) -> Any:
    """The default of field ``name`` of the config dataclass ``config`` (or of parameter ``name`` of
    the library function ``config``): an option's default and the value its help states are read
    from the one place the stage defines it."""
    if not dataclasses.is_dataclass(config):
        default = inspect.signature(config).parameters[name].default
        if default is inspect.Parameter.empty:
            raise KeyError(f"{config.__name__}({name}) has no default")
        return default
    for f in dataclasses.fields(config):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
            break
    raise KeyError(f"{config.__name__}.{name} has no default")


# ------------------------------------------------------------------------------------ options
def add_db_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--db",
        default=None,
        help="SQLite results file (default: $AUTOINTERP_DB or ./autointerp.db)",
    )


def db_path(args: argparse.Namespace) -> str:
    from autointerp.store import default_db_path

    return args.db or default_db_path()


def add_device_options(p: argparse.ArgumentParser) -> None:
    """--device and --dtype (load_model's defaults) for commands that run the subject model. The
    names come from :mod:`autointerp.model_names`, not :mod:`autointerp.models`: ``serve`` has these
    options and must start without torch."""
    from autointerp.model_names import DEFAULT_DEVICE, DEFAULT_DTYPE, DTYPE_NAMES

    dtype = DEFAULT_DTYPE
    p.add_argument(
        "--device",
        default=DEFAULT_DEVICE,
        help=(
            "where the subject model runs: auto (CUDA when available, else CPU), cpu, cuda or"
            " cuda:N"
        ),
    )
    p.add_argument(
        "--dtype",
        default=dtype,
        choices=list(DTYPE_NAMES),
        help=(
            f"the subject model's dtype (default {dtype}); statistics stay float32/float64"
            " either way. bfloat16 is faster on a GPU or a CPU with bfloat16 instructions"
            " (avx512_bf16, AMX) and several times slower on a CPU without them"
        ),
    )


def add_executor_options(p: argparse.ArgumentParser, tasks: str, workers: str) -> None:
    """--executor and --workers for a stage that can run as Ray tasks; ``tasks`` says how the
    stage's work is cut into tasks, ``workers`` what --workers counts."""
    p.add_argument(
        "--executor",
        default="local",
        help=(
            "local (this process, default), ray (join $RAY_ADDRESS or start a cluster), ray:local"
            f" (start one on this machine) or ray:ADDRESS: {tasks}"
        ),
    )
    p.add_argument("--workers", type=whole(), default=None, help=f"with --executor ray: {workers}")


def parse_executor(args: argparse.Namespace) -> Any:
    """The :class:`autointerp.executors.Executor` of ``--executor``/``--workers``, refused in one
    sentence when either makes no sense."""
    from autointerp.executors import Executor

    executor = Executor.parse(args.executor)
    if executor.kind == "ray" and args.workers is not None and args.workers < 1:
        raise UserError("--workers must be at least 1.")
    return executor


def at_least(low: int, high: int = MAX_INDEX) -> Callable[[str], int]:
    """An integer option that must be ``>= low`` (an argparse type: checked before anything
    runs), and at most ``high``: past 64 bits a number overflows SQLite and numpy, and no layer,
    neuron or count comes near :data:`autointerp.ranges.MAX_INDEX`, the API's bound too."""

    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, not {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, not {value}")
        if value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high}, not {value}")
        return value

    return convert


#: The bound of whole-number options that count tokens or seed a generator, which may exceed
#: :data:`autointerp.ranges.MAX_INDEX` but must fit SQLite's 64-bit integers.
INT64_MAX = 2**63 - 1


def whole(high: int = MAX_INDEX) -> Callable[[str], int]:
    """An integer option with no lower bound of its own (the command or its config checks that,
    in its own words) that must lie within ``-high .. high``. Text that is no integer gets
    argparse's usual "invalid int value"."""

    def convert(text: str) -> int:
        value = int(text)  # a ValueError is argparse's "invalid int value: 'x'"
        if abs(value) > high:
            side = "at most" if value > 0 else "at least"
            limit = high if value > 0 else -high
            raise argparse.ArgumentTypeError(f"must be {side} {limit}, not {value}")
        return value

    convert.__name__ = "int"
    return convert


def count_or_all(text: str) -> int | None:
    """A count option that may also be ``all`` (None: as many as there are)."""
    if text.strip().lower() == "all":
        return None
    return at_least(0)(text)


def finite(text: str) -> float:
    """A float option that must be a finite number (nan and inf compare with nothing sensibly)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, not {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, not {text!r}")
    return value


def text_arg(args: argparse.Namespace) -> str:
    """--text, or standard input read as strict UTF-8."""
    return args.text if args.text is not None else read_text()


# ------------------------------------------------------------------------------------ running
def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2)
    sys.stdout.write("\n")


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Libraries print progress to stdout; keep stdout clean for --json output."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def log(message: str) -> None:
    """Progress and warnings for the user go to stderr."""
    print(message, file=sys.stderr)


def load_subject(name: str, progress: bool = True, args: argparse.Namespace | None = None) -> Any:
    """The subject model ``name`` on the --device/--dtype that ``args`` give (a random-init
    control's name, ``MODEL+random-init-SEED``, builds that control)."""
    from autointerp.models import slow_dtype_warning
    from autointerp.random_init import load_subject as load_model_or_control

    device, dtype = getattr(args, "device", "auto"), getattr(args, "dtype", "float32")
    with stdout_to_stderr():
        model = load_model_or_control(name, progress=progress, device=device, dtype=dtype)
    warning = slow_dtype_warning(model.device, model.dtype)
    if warning:
        log(warning)
    return model


def stored_layers(store: Any, model: str, text: str | None) -> list[int] | None:
    """``--layers`` of a stage that reads the database: ``auto`` is resolved from the depth recorded
    with the model's harvest (the same layers `harvest --layers auto` chose); ``None`` means every
    harvested layer."""
    from autointerp.ranges import is_auto_layers, parse_layers, resolve_layers

    if not is_auto_layers(text):
        return parse_layers(text)
    info = store.model_info(model)
    if not info or not info.get("n_layers"):
        raise store.not_harvested(model)
    return resolve_layers(text, int(info["n_layers"]))


def store_model(store: Any, name: str) -> str:
    """The stored name of a model that has N2G graphs or harvests in ``store`` (one sentence if
    it has none)."""
    from autointerp.model_names import canonical_model_name

    model = canonical_model_name(name)
    names = {r["model"] for r in store.runs()}
    if model not in names and name in names:
        model = name
    if model not in names:
        have = f"; it has: {', '.join(sorted(names))}" if names else ""
        raise UserError(f"No results for {model} in {store.path}{have}.")
    return model


def command_name() -> str:
    """What to type to run this autointerp again, for the commands the CLI prints: ``autointerp``
    when that name on PATH is this installation's script; otherwise the script's path (the one
    this process was started as, else the one beside its Python), relative to the working
    directory when it lies inside it. `make explain` runs ``.venv/bin/autointerp`` without
    activating the venv, so its report prints ``.venv/bin/autointerp neuron ...``, which runs as
    pasted where a bare ``autointerp`` is "command not found"."""
    import os
    import shutil
    from pathlib import Path

    started = Path(os.path.abspath(sys.argv[0])) if sys.argv and sys.argv[0] else None
    script = (
        started
        if started is not None and started.name == "autointerp" and started.is_file()
        else Path(os.path.abspath(sys.prefix)) / "bin" / "autointerp"
    )
    if not script.exists():  # not installed as a script (a source checkout run with -m)
        return "autointerp"
    found = shutil.which("autointerp")
    if found is not None and Path(found).resolve() == script.resolve():
        return "autointerp"
    here = Path(os.getcwd())
    return str(script.relative_to(here)) if script.is_relative_to(here) else str(script)
