"""Prompt rendering for the explainer and the simulator, from the template files in ``prompts/``.

The format follows OpenAI's neuron-explainer: one ``token<tab>activation`` line per token between
``<start>`` and ``<end>``, activations discretised to an integer scale (0-9 here: in the Qwen, Gemma
and SmolLM tokenizers "10" is two tokens, so a 0-10 scale could not be read from one token's
logprobs), then the non-zero lines again, ending in "the main thing this neuron does is find".
Tokens are escaped so whitespace stays readable (``\\n``, ``\\t``).

Every explanation is stored with :func:`prompt_version` - the template set's name plus a hash of the
files - so a changed template never mixes with results made from the old one.

**Variants** (``--prompt NAME``, :data:`PROMPT_VARIANTS`) change how the explainer sees the records,
each with its own system text in ``prompts/``: ``tokens`` (the default, above) or ``summary`` - each
excerpt as plain text followed by only the tokens it fires on with their values, the shape Lee et
al. (2023, "The Importance of Prompt Tuning for Automated Neuron Explanations") found better than
OpenAI's with fewer tokens (here a third fewer; not better with the packaged 1.5B: BENCHMARKS.md).
The simulator's prompts are the same for every variant, so scores stay comparable.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from autointerp.errors import UserError
from autointerp.untrusted import escape_token

SCALE_MAX = 9
# what simulation prompts put in the activation slots (the model's own guess is read, not this)
PLACEHOLDER = "?"
EXPLANATION_PREFIX = "the main thing this neuron does is find"
TEMPLATE_FILES = (
    "explain_system.txt",
    "simulate_system.txt",
    "examples.json",
    "compile_system.txt",
    "compile_examples.json",
    "revise_system.txt",
    "restate_system.txt",
)
#: explainer prompt variant -> its system text (the file that replaces ``explain_system.txt``)
PROMPT_VARIANTS = {"tokens": "explain_system.txt", "summary": "explain_system_summary.txt"}
DEFAULT_VARIANT = "tokens"


def prompts_dir() -> Path:
    """``$AUTOINTERP_PROMPTS``, else the templates installed with the package, else the repository's
    ``prompts/``.

    ``prompts/`` stays the top-level folder people edit; the build maps it into the package as
    ``autointerp/prompts/`` (pyproject's ``package-dir``), so a regular ``pip install`` carries the
    templates. In a checkout or an editable install there is no ``autointerp/prompts/`` folder and
    the repository's is used.
    """
    env = os.environ.get("AUTOINTERP_PROMPTS")
    if env:
        return Path(env)
    installed = Path(__file__).resolve().parents[1] / "prompts"
    if (installed / TEMPLATE_FILES[0]).is_file():
        return installed
    return Path(__file__).resolve().parents[2] / "prompts"


@dataclass(frozen=True)
class Templates:
    explain_system: str
    simulate_system: str
    examples: list[dict[str, Any]]
    #: the system text asking for a matching rule (the ``rule`` simulator,
    #: :mod:`autointerp.explain.rules`)
    compile_system: str
    #: few-shot ``{"description", "rule"}`` pairs for the rule compiler
    compile_examples: list[dict[str, Any]]
    #: the system text of a feedback round (:mod:`autointerp.explain.feedback`)
    revise_system: str
    #: the system text asking to restate a written candidate in plain words
    restate_system: str
    #: e.g. "v1-3f2a9c1b7d20": the examples' version (and the variant, when not the default) and a
    #: hash of the template files used
    version: str
    #: how the explainer sees records: a key of :data:`PROMPT_VARIANTS`
    variant: str = DEFAULT_VARIANT


@lru_cache(maxsize=4)
def load_templates(folder: str | None = None, variant: str = DEFAULT_VARIANT) -> Templates:
    """The template set in ``folder`` (default :func:`prompts_dir`) with the explainer's system
    text of ``variant``; one sentence when a file is missing or malformed."""
    if variant not in PROMPT_VARIANTS:
        raise UserError(
            f"Unknown prompt variant {variant!r}; choose one of {', '.join(PROMPT_VARIANTS)}."
        )
    root = Path(folder) if folder else prompts_dir()
    files = (PROMPT_VARIANTS[variant],) + TEMPLATE_FILES[1:]
    missing = [f for f in files if not (root / f).is_file()]
    if missing:
        raise UserError(f"The prompt folder {root} lacks {', '.join(missing)}.")
    digest = hashlib.sha256()
    for name in files:
        # hashed under the default file's name, so the default set's version is what it always was
        key = TEMPLATE_FILES[0] if name == files[0] else name
        digest.update(key.encode() + b"\0" + (root / name).read_bytes() + b"\0")
    try:
        examples = json.loads((root / "examples.json").read_text(encoding="utf-8"))
    except ValueError as exc:
        raise UserError(f"{root / 'examples.json'} is not valid JSON: {exc}") from exc
    _check_examples(examples, root / "examples.json")
    compile_examples = _read_json(root / "compile_examples.json")
    _check_compile_examples(compile_examples, root / "compile_examples.json")
    label = examples.get("version", "v?") + ("" if variant == DEFAULT_VARIANT else f"-{variant}")
    return Templates(
        explain_system=(root / files[0]).read_text(encoding="utf-8").strip(),
        simulate_system=(root / "simulate_system.txt").read_text(encoding="utf-8").strip(),
        examples=examples["neurons"],
        compile_system=(root / "compile_system.txt").read_text(encoding="utf-8").strip(),
        compile_examples=compile_examples["examples"],
        revise_system=(root / "revise_system.txt").read_text(encoding="utf-8").strip(),
        restate_system=(root / "restate_system.txt").read_text(encoding="utf-8").strip(),
        version=f"{label}-{digest.hexdigest()[:12]}",
        variant=variant,
    )


_RECORD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["tokens", "activations"],
    "properties": {
        "tokens": {"type": "array", "items": {"type": "string"}},
        "activations": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}},
    },
}
_NEURON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["explanation", "records"],
    "properties": {
        "explanation": {"type": "string", "minLength": 1},
        "records": {"type": "array", "minItems": 1, "items": _RECORD_SCHEMA},
    },
}
EXAMPLES_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["neurons"],
    "properties": {
        "version": {"type": "string"},
        "neurons": {"type": "array", "minItems": 1, "items": _NEURON_SCHEMA},
    },
}


def _check_examples(examples: Any, path: Path) -> None:
    """The few-shot file is user-editable (``--prompts DIR``): a wrong shape is one sentence, not a
    KeyError later."""
    _check_shape(examples, EXAMPLES_SCHEMA, path, "the few-shot examples'")
    for i, neuron in enumerate(examples["neurons"]):
        for j, record in enumerate(neuron["records"]):
            if len(record["tokens"]) != len(record["activations"]):
                raise UserError(
                    f"{path}: neurons/{i}/records/{j} has {len(record['tokens'])} "
                    f"tokens but {len(record['activations'])} activations."
                )


def _check_shape(data: Any, schema: dict[str, Any], path: Path, what: str) -> None:
    """One sentence naming the file and the place where ``data`` leaves ``schema``."""
    import jsonschema

    try:
        jsonschema.validate(data, schema)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "the top level"
        raise UserError(f"{path} does not have {what} shape at {where}: {exc.message}.") from exc


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise UserError(f"{path} is not valid JSON: {exc}") from exc


def _check_compile_examples(examples: Any, path: Path) -> None:
    """Each few-shot rule must itself be a valid rule: the model copies their shape."""

    from autointerp.explain.rules import RuleError, parse_rule

    schema = {
        "type": "object",
        "required": ["examples"],
        "properties": {
            "examples": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["description", "rule"],
                    "properties": {
                        "description": {"type": "string", "minLength": 1},
                        "rule": {"type": "object"},
                    },
                },
            }
        },
    }
    _check_shape(examples, schema, path, "the rule examples'")
    for i, ex in enumerate(examples["examples"]):
        try:
            parse_rule(json.dumps(ex["rule"]))
        except RuleError as exc:
            raise UserError(f"{path}: examples/{i} has an unusable rule: {exc}.") from exc


def discretise(values: Sequence[float], max_activation: float) -> list[int]:
    """Activations -> integers 0..9 relative to the neuron's max (negative values are 0: the
    positive side)."""
    if max_activation <= 0:
        return [0 for _ in values]
    return [min(SCALE_MAX, max(0, round(v / max_activation * SCALE_MAX))) for v in values]


def format_record(
    tokens: Sequence[str], values: Sequence[int | str], nonzero_only: bool = False
) -> str:
    lines = ["<start>"]
    for tok, val in zip(tokens, values, strict=True):
        if nonzero_only and (val == 0 or val == "0"):
            continue
        lines.append(f"{escape_token(tok)}\t{val}")
    lines.append("<end>")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Record:
    """A stretch of text with the neuron's activations (raw units), as shown to the LLM and
    scored against."""

    tokens: list[str]
    activations: list[float]
    kind: str = "top"  # top | random | quantile (quantile records count in AUPRC, not the headline)
    #: the harvest context it was cut from (None when not from a harvest): which example it is
    context_id: int | None = None


@dataclass(frozen=True)
class OutputTokens:
    """The output side of a neuron, from its weights alone (:mod:`autointerp.weights`): the tokens
    whose next-token logits its firing raises and lowers most, through the unembedding."""

    #: strongest first, as the tokenizer writes them
    promoted: list[str]
    #: strongest first
    suppressed: list[str]

    def sentence(self) -> str:
        """One line for the explainer prompt (tokens escaped and quoted, so whitespace shows)."""

        def quoted(tokens: Sequence[str]) -> str:
            return ", ".join(f'"{escape_token(t)}"' for t in tokens)

        parts = []
        if self.promoted:
            parts.append(f"makes these next tokens more likely: {quoted(self.promoted)}")
        if self.suppressed:
            parts.append(f"makes these less likely: {quoted(self.suppressed)}")
        return "When this neuron fires, its output " + "; it ".join(parts) + "."


def _neuron_block(
    index: int, records: Sequence[tuple[Sequence[str], Sequence[int]]], variant: str
) -> str:
    if variant == "summary":
        return _summary_block(index, records)
    parts = [f"Neuron {index}", "Activations:"]
    parts.extend(format_record(t, v).rstrip("\n") for t, v in records)
    parts.append("Same activations, but with all zeros left out:")
    parts.extend(format_record(t, v, nonzero_only=True).rstrip("\n") for t, v in records)
    return "\n".join(parts) + "\n\n"


def _summary_block(index: int, records: Sequence[tuple[Sequence[str], Sequence[int]]]) -> str:
    """The ``summary`` variant: each excerpt as text (whitespace escaped), then only the tokens it
    fires on, in order, with their 1-9 values."""
    parts = [f"Neuron {index}"]
    for i, (tokens, values) in enumerate(records, 1):
        parts.append(f"Excerpt {i}: {escape_token(''.join(tokens))}")
        firing = [
            f'"{escape_token(t)}" {v}' for t, v in zip(tokens, values, strict=True) if int(v) > 0
        ]
        parts.append("Fires on: " + (", ".join(firing) if firing else "nothing"))
    return "\n".join(parts) + "\n\n"


def explanation_messages(
    records: Sequence[Record],
    max_activation: float,
    templates: Templates,
    n2g_paths: Sequence[str] | None = None,
    top_tokens: str | None = None,
    output_tokens: OutputTokens | None = None,
) -> list[dict[str, str]]:
    """Chat messages asking for a one-phrase explanation of the records' neuron (few-shot, then the
    target).

    ``top_tokens`` (the token-lookup summary) and ``n2g_paths`` are optional extra evidence after
    the records: small local models otherwise tend to repeat a few-shot answer instead of reading
    the activations. ``output_tokens`` is the output side (what the neuron's firing makes the model
    predict next); the few-shot neurons have none, so it is the target's alone."""
    messages = [{"role": "system", "content": templates.explain_system}]
    for i, ex in enumerate(templates.examples, 1):
        recs = [(r["tokens"], r["activations"]) for r in ex["records"]]
        messages.append(
            {
                "role": "user",
                "content": (
                    _neuron_block(i, recs, templates.variant)
                    + f"Explanation of neuron {i} behavior: {EXPLANATION_PREFIX}"
                ),
            }
        )
        messages.append({"role": "assistant", "content": f" {ex['explanation']}."})
    n = len(templates.examples) + 1
    target = [(r.tokens, discretise(r.activations, max_activation)) for r in records]
    body = _neuron_block(n, target, templates.variant)
    if top_tokens:
        body += f"The tokens it fires on most: {top_tokens}.\n\n"
    if n2g_paths:
        body += (
            "Token patterns that make this neuron fire, from its neuron-to-graph model "
            "(earlier context ... activating token: strength 0-9):\n"
            + "\n".join(n2g_paths)
            + "\n\n"
        )
    if output_tokens and (output_tokens.promoted or output_tokens.suppressed):
        body += output_tokens.sentence() + "\n\n"
    messages.append(
        {
            "role": "user",
            "content": body + f"Explanation of neuron {n} behavior: {EXPLANATION_PREFIX}",
        }
    )
    return messages


def parse_explanation(text: str) -> str:
    """The explanation phrase from the model's reply; raises ValueError when there is none."""
    out = (text or "").strip()
    lower = out.lower()
    for prefix in (
        EXPLANATION_PREFIX,
        "the main thing this neuron does is",
        "this neuron finds",
        "find",
    ):
        if lower.startswith(prefix):
            out = out[len(prefix) :].strip()
            lower = out.lower()
    out = out.split("\n")[0].strip()
    # quotes around the whole phrase are not part of it; a quote that closes a quoted word is
    if len(out) > 1 and out[0] == out[-1] == '"':
        out = out[1:-1].strip()
    elif out.count('"') % 2:  # one unpaired quote at an end: as before, dropped
        out = out.strip('"').strip()
    if out.endswith("."):
        out = out[:-1].strip()
    if len(out) < 2 or len(out) > 400:
        raise ValueError(f"expected a short phrase, got {text[:80]!r}")
    return out


@dataclass(frozen=True)
class SimulationPrompt:
    """A completions prompt whose activation slots are at known character offsets."""

    text: str
    slot_offsets: list[int]


def simulation_prompt(
    explanation: str, tokens: Sequence[str], templates: Templates
) -> SimulationPrompt:
    """All-at-once simulation prompt: few-shot neurons with their activations, then the target
    record with a placeholder in every slot. The simulator's expected value over the digits at each
    slot is the prediction."""
    head = [templates.simulate_system, ""]
    for i, ex in enumerate(templates.examples, 1):
        head.append(f"Neuron {i}")
        head.append(
            f"Explanation of neuron {i} behavior: {EXPLANATION_PREFIX} {ex['explanation']}."
        )
        head.append("Activations:")
        for r in ex["records"]:
            head.append(format_record(r["tokens"], r["activations"]).rstrip("\n"))
        head.append("")
    n = len(templates.examples) + 1
    head.append(f"Neuron {n}")
    head.append(f"Explanation of neuron {n} behavior: {EXPLANATION_PREFIX} {explanation}.")
    head.append("Activations:")
    text = "\n".join(head) + "\n<start>\n"
    slots = []
    for tok in tokens:
        text += escape_token(tok) + "\t"
        slots.append(len(text))
        text += PLACEHOLDER + "\n"
    text += "<end>\n"
    return SimulationPrompt(text, slots)


def simulation_messages(
    explanation: str, tokens: Sequence[str], templates: Templates, json_only: bool
) -> list[dict[str, str]]:
    """Chat messages for simulators without prompt logprobs: the reply is one
    ``index<TAB>token<TAB>digit`` line per token (the generated digits' logprobs give expected
    values; repeating the numbered token keeps small models from losing count), or a JSON object
    when ``json_only``."""

    def numbered(toks: Sequence[str]) -> str:
        return "\n".join(f"{i}\t{escape_token(t)}" for i, t in enumerate(toks))

    if json_only:
        fmt = (
            'Answer with JSON only: {"activations": [...]} with exactly one integer 0-9 per token,'
            " in order."
        )
    else:
        fmt = (
            "Answer with one line per token, in order: the token's number, a tab, the token exactly"
            " as given, a tab, and its activation (one digit 0-9). Nothing else."
        )
    messages = [{"role": "system", "content": templates.simulate_system + "\n\n" + fmt}]
    for ex in templates.examples:
        for r in ex["records"][:1]:
            messages.append(
                {
                    "role": "user",
                    "content": (
                        f"Explanation: {EXPLANATION_PREFIX} {ex['explanation']}.\n"
                        f"Tokens ({len(r['tokens'])}):\n{numbered(r['tokens'])}"
                    ),
                }
            )
            values = r["activations"]
            answer = (
                json.dumps({"activations": values})
                if json_only
                else "\n".join(
                    f"{i}\t{escape_token(t)}\t{v}"
                    for i, (t, v) in enumerate(zip(r["tokens"], values, strict=True))
                )
            )
            messages.append({"role": "assistant", "content": answer})
    messages.append(
        {
            "role": "user",
            "content": (
                f"Explanation: {EXPLANATION_PREFIX} {explanation}.\n"
                f"Tokens ({len(tokens)}):\n{numbered(tokens)}"
            ),
        }
    )
    return messages


def compile_messages(explanation: str, templates: Templates) -> list[dict[str, str]]:
    """Chat messages asking for the matching rule of one explanation (few-shot pairs, then the
    target); the reply is parsed by :func:`autointerp.explain.rules.parse_rule`."""
    messages = [{"role": "system", "content": templates.compile_system}]
    for ex in templates.compile_examples:
        messages.append({"role": "user", "content": f"Description: {ex['description']}"})
        messages.append(
            {"role": "assistant", "content": json.dumps(ex["rule"], ensure_ascii=False)}
        )
    messages.append({"role": "user", "content": f"Description: {explanation}"})
    return messages
