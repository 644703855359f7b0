"""Simulate a neuron from its explanation, and score any predictor by correlation with the real
activations.

The default simulator is ``rule``: the LLM compiles the explanation once into a declarative matching
rule (words, a regular expression) that a deterministic matcher applies to every held-out token
(:mod:`autointerp.explain.rules`; fires = 9, else 0). With the packaged small models it is the only
mode under which correct descriptions score high, and it costs one short call per explanation; the
measurements are in BENCHMARKS.md. The rule is returned with the scores, so a user can see what the
simulator understood.

Three token-by-token LLM simulator modes (OpenAI's method, for strong hosted models), picked by what
the endpoint can do (``auto`` probes once):

* ``echo`` - all at once from prompt logprobs: one ``/v1/completions`` call with ``echo`` +
  ``logprobs`` per record; the prediction at each token is the expected value over the digits 0-9 in
  the top logprobs at its activation slot (llama.cpp through :mod:`autointerp.llm.echo_server`,
  vLLM). ``echo-shifted`` is the same for servers whose ``top_logprobs[i]`` predicts token ``i + 1``
  (llama-cpp-python's stock server); the probe tells them apart.
* ``chat-logprobs`` - hosted chat models: the reply is one line per token,
  ``index<TAB>token<TAB>digit``, and each generated digit's top logprobs give the expected value.
  Index and token are repeated because small models lose count in a bare list of digits (the local
  0.5B answered 10 values for 18 tokens, and 7 lines for 8 tokens with the index alone).
* ``json`` - no logprobs at all: the reply is ``{"activations": [...]}``, validated with jsonschema.

Scores (what :func:`score_predictions` computes) use the same records for every predictor - LLM
explanation, token-lookup baseline and N2G graph - so the numbers compare directly.

A simulation is only trusted when the simulator actually answered on the 0-9 scale: in echo modes a
slot whose top logprobs hold no digit is counted, and a record with more than
:data:`MAX_DIGITLESS_FRACTION` of its slots digit-less fails the whole simulation with the reason
("no digit in the top 15 at 28 of 32 slots") instead of turning into a string of zeros that would
look like a bad explanation. Below the threshold a digit-less slot counts as 0 (the simulator
expects no activation there).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import jsonschema
import numpy as np

from autointerp.errors import UserError
from autointerp.explain.prompts import (
    SCALE_MAX,
    Record,
    Templates,
    compile_messages,
    simulation_messages,
    simulation_prompt,
)
from autointerp.explain.rules import Rule, RuleError, RuleTimeout, TokenRule, parse_rule
from autointerp.explain.templates import template_rule
from autointerp.llm.client import InvalidOutput, LLMClient, LLMFailure, Usage

MODES = ("rule", "auto", "echo", "echo-shifted", "chat-logprobs", "json")
#: Modes that never ask the endpoint for logprobs (a local server can then run without them).
LOGPROB_FREE_MODES = ("rule", "json")
#: Tokens a compiled rule may take (long word lists are the usual reason to need many).
RULE_MAX_TOKENS = 256
#: text a description quotes (straight or curly double quotes), which it names literally
QUOTED = re.compile(r'"([^"\n]+)"|\u201c([^\u201d\n]+)\u201d')
DIGITS = {str(d): d for d in range(SCALE_MAX + 1)}
#: A token "fires" at this share of the neuron's max activation: N2G's firing threshold
#: (``N2GConfig.fire_threshold``), so a simulation's AUPRC and a graph's F1 ask the same question.
FIRE_THRESHOLD = 0.5
#: A record whose slots lack a digit in the top logprobs more often than this is a failed
#: simulation, not a score.
MAX_DIGITLESS_FRACTION = 0.25


class SimulationFailure(LLMFailure):
    """The simulator answered, but not on the 0-9 scale (see :data:`MAX_DIGITLESS_FRACTION`). Not
    retried: echo calls run at temperature 0, so a retry would repeat the same answer."""

    def __init__(self, reason: str):
        super().__init__(reason, attempts=1, transient=False)


def expected_digit(top: dict[str, float] | None) -> float | None:
    """Expected value over the digit tokens among the top logprobs (renormalised); None when no
    digit is there."""
    if not top:
        return None
    probs = np.zeros(SCALE_MAX + 1)
    for tok, logprob in top.items():
        d = DIGITS.get(tok.strip())
        if d is not None and logprob is not None:
            probs[d] += float(np.exp(logprob))
    total = probs.sum()
    if total <= 0:
        return None
    return float((probs * np.arange(SCALE_MAX + 1)).sum() / total)


def parse_echo(response: dict[str, Any], slots: Sequence[int], shift: int) -> list[float]:
    """Predictions at the slot offsets from an echo response (see the module docstring for
    ``shift``); a slot with no digit in its top logprobs is 0."""
    return [0.0 if v is None else v for v in parse_echo_slots(response, slots, shift)]


def parse_echo_slots(
    response: dict[str, Any], slots: Sequence[int], shift: int
) -> list[float | None]:
    """Like :func:`parse_echo`, but a slot with no digit in its top logprobs is None, so it can be
    counted."""
    try:
        lp = response["choices"][0]["logprobs"]
        offsets, tops = lp["text_offset"], lp["top_logprobs"]
    except (KeyError, IndexError, TypeError) as exc:
        raise InvalidOutput("the response has no prompt logprobs") from exc
    if not offsets or len(offsets) != len(tops):
        raise InvalidOutput("the response has no prompt logprobs")
    at = {}
    for i, off in enumerate(offsets):
        at.setdefault(off, i)
    out: list[float | None] = []
    for slot in slots:
        i = at.get(slot)
        if i is None:
            raise InvalidOutput(f"no token starts at the activation slot at character {slot}")
        j = i + shift
        out.append(expected_digit(tops[j]) if 0 <= j < len(tops) else None)
    return out


def check_digits(values: Sequence[float | None], top_logprobs: int) -> list[float]:
    """Digit-less slots as 0, or :class:`SimulationFailure` when there are more than
    :data:`MAX_DIGITLESS_FRACTION` of them (the simulator did not answer on the scale)."""
    missing = sum(v is None for v in values)
    if values and missing > MAX_DIGITLESS_FRACTION * len(values):
        raise SimulationFailure(
            f"no digit in the top {top_logprobs} at {missing} of {len(values)} slots"
        )
    return [0.0 if v is None else v for v in values]


def parse_chat_digits(response: dict[str, Any], n: int, indexed: bool = False) -> list[float]:
    """Expected values of the generated digits; with ``indexed`` only a digit right after the second
    tab of a line counts (the ``index<TAB>token<TAB>digit`` lines of a chat simulation: indexes and
    tokens may hold digits too)."""
    try:
        content = response["choices"][0]["logprobs"]["content"]
    except (KeyError, IndexError, TypeError) as exc:
        raise InvalidOutput("the reply has no token logprobs") from exc
    if not content:
        raise InvalidOutput("the reply has no token logprobs")
    out = []
    text = ""
    for item in content:
        raw = item.get("token") or ""
        tok = raw.strip()
        before = text + raw[: len(raw) - len(raw.lstrip())]
        text += raw
        line = before.rsplit("\n", 1)[-1]
        if tok in DIGITS and (not indexed or (line.endswith("\t") and line.count("\t") == 2)):
            top = {t["token"]: t["logprob"] for t in item.get("top_logprobs") or []}
            top.setdefault(item["token"], item["logprob"])
            value = expected_digit(top)
            out.append(float(DIGITS[tok]) if value is None else value)
        elif not indexed and tok and not re.fullmatch(r"[\s,]*", tok):
            raise InvalidOutput(f"unexpected token {tok[:20]!r} in the list of values")
    if len(out) != n:
        raise InvalidOutput(f"expected {n} values, got {len(out)}")
    return out


def json_schema(n: int) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["activations"],
        "properties": {
            "activations": {
                "type": "array",
                "minItems": n,
                "maxItems": n,
                "items": {"type": "integer", "minimum": 0, "maximum": SCALE_MAX},
            }
        },
    }


def parse_json_values(response: dict[str, Any], n: int) -> list[float]:
    try:
        text = response["choices"][0]["message"]["content"] or ""
    except (KeyError, IndexError, TypeError) as exc:
        raise InvalidOutput("the reply has no message") from exc
    text = re.sub(r"^```(?:json)?\s*|\s*```$", "", text.strip())
    try:
        data = json.loads(text)
    except ValueError as exc:
        cut = _truncated(response)
        raise InvalidOutput(
            ("truncated at max_tokens: " if cut else "") + f"not JSON: {text[:60]!r}"
        ) from exc
    try:
        jsonschema.validate(data, json_schema(n))
    except jsonschema.ValidationError as exc:
        raise InvalidOutput(f"JSON does not match the schema: {exc.message[:120]}") from exc
    return [float(v) for v in data["activations"]]


def covering_rule(rule: Rule, explanation: str) -> Rule:
    """The compiled rule checked against the description it came from. A rule that covers
    nothing (no word, token, pattern or condition) ignores what the description names: the 0.5B
    compiles 'the hyphen character "-"' and every other symbol to an empty rule. When the
    description quotes text, the quoted text is what it names, so it becomes the rule's words.
    With nothing quoted the empty rule stands: it is what the compiler made of the description,
    and it scores as silence (retrying did not change the 0.5B's answer)."""
    if not isinstance(rule, TokenRule) or any(
        (rule.words, rule.tokens, rule.regex, rule.positions, rule.after)
    ):
        return rule
    found = (a or b for a, b in QUOTED.findall(explanation))
    quoted = tuple(dict.fromkeys(q for q in found if q.strip()))
    return replace(rule, words=quoted) if quoted else rule


def _truncated(response: dict[str, Any]) -> bool:
    """The server stopped at ``max_tokens`` (``finish_reason == "length"``): the reply is cut, so
    say so."""
    try:
        return response["choices"][0].get("finish_reason") == "length"
    except (KeyError, IndexError, TypeError, AttributeError):
        return False


def retry_hotter(attempt: int) -> dict[str, Any]:
    """A deterministic retry would repeat the same bad answer: sample instead."""
    return {"temperature": 0.7, "seed": attempt}


class Simulator:
    """Predicts per-token activations (0-9 scale) from an explanation through the LLM client."""

    def __init__(
        self,
        client: LLMClient,
        model: str,
        templates: Templates,
        mode: str = "auto",
        top_logprobs: int = 15,
    ):
        if mode not in MODES:
            raise UserError(f"Unknown simulator mode {mode!r}; choose one of {', '.join(MODES)}.")
        self.client, self.model, self.templates = client, model, templates
        self.top_logprobs = top_logprobs
        self.mode = mode
        if mode == "auto":
            try:
                self.mode = self.detect_mode()
            except LLMFailure:
                # the server is unreachable now; each simulate() probes again, then fails
                self.mode = "auto"

    def detect_mode(self) -> str:
        """Probe the endpoint once: prompt logprobs (and their alignment), else chat logprobs, else
        JSON.

        Raises LLMFailure when the server is unreachable (rather than guessing a mode)."""
        text = ", ".join(str(i) for i in range(1, 25))
        body = {"prompt": text, "echo": True, "logprobs": 5, "max_tokens": 1, "temperature": 0}
        try:
            mode, _ = self.client.call("completions", self.model, body, _probe_echo)
            return mode
        except LLMFailure as exc:
            if exc.transient:
                raise
        body = {
            "messages": [{"role": "user", "content": "Reply with the digit 7."}],
            "max_tokens": 3,
            "temperature": 0,
            "logprobs": True,
            "top_logprobs": 3,
        }
        try:
            self.client.call("chat", self.model, body, lambda r: parse_chat_digits(r, 1))
            return "chat-logprobs"
        except LLMFailure as exc:
            if exc.transient:
                raise
            return "json"

    def compile_rule(self, explanation: str) -> tuple[Rule, Usage]:
        """The explanation as a matching rule: with no LLM call when it is written in the template
        grammar (:mod:`autointerp.explain.templates`: the baseline, the pipeline's own candidates,
        any sentence of that form), else one chat call (an unusable rule is retried at a higher
        temperature, then a failure with the reason)."""
        written = template_rule(explanation)
        if written is not None:
            return written, Usage()

        def parse(response: dict[str, Any]) -> Rule:
            try:
                content = response["choices"][0]["message"]["content"] or ""
            except (KeyError, IndexError, TypeError) as exc:
                raise InvalidOutput("the reply has no message") from exc
            try:
                rule = parse_rule(content)
            except RuleError as exc:
                cut = "truncated at max_tokens: " if _truncated(response) else ""
                raise InvalidOutput(cut + str(exc)) from exc
            return covering_rule(rule, explanation)

        body = {
            "messages": compile_messages(explanation, self.templates),
            "max_tokens": RULE_MAX_TOKENS,
            "temperature": 0,
            # JSON mode (OpenAI, vLLM; a JSON grammar on llama.cpp): the 1.5B otherwise wrote a
            # quote token as """ and failed all four attempts on that neuron's rule
            "response_format": {"type": "json_object"},
        }
        return self.client.call("chat", self.model, body, parse, retry_hotter)

    def simulate_records(
        self, explanation: str, token_lists: Sequence[Sequence[str]]
    ) -> tuple[list[list[float]], Usage, str | None]:
        """Predictions (0-9) for every token of every record, what the calls used, and the compiled
        rule as JSON (``rule`` mode; None otherwise). Raises LLMFailure when the endpoint fails for
        good or the simulation is unusable."""
        if self.mode == "rule":
            rule, usage = self.compile_rule(explanation)
            try:
                preds = [[SCALE_MAX * v for v in rule.apply(tokens)] for tokens in token_lists]
            except RuleTimeout as exc:
                raise SimulationFailure(str(exc)) from exc
            return preds, usage, rule.to_json()
        usage = Usage()
        preds = []
        for tokens in token_lists:
            values, used = self.simulate(explanation, tokens)
            usage.add(used)
            preds.append(values)
        return preds, usage, None

    def simulate(self, explanation: str, tokens: Sequence[str]) -> tuple[list[float], Usage]:
        """Expected activation (0-9) at every token. Raises LLMFailure when the endpoint fails
        for good."""
        n = len(tokens)
        if self.mode == "rule":
            preds, usage, _ = self.simulate_records(explanation, [tokens])
            return preds[0], usage
        if self.mode == "auto":
            self.mode = self.detect_mode()
        if self.mode in ("echo", "echo-shifted"):
            prompt = simulation_prompt(explanation, tokens, self.templates)
            body = {
                "prompt": prompt.text,
                "echo": True,
                "logprobs": self.top_logprobs,
                "max_tokens": 1,
                "temperature": 0,
            }
            shift = -1 if self.mode == "echo-shifted" else 0
            slots, usage = self.client.call(
                "completions",
                self.model,
                body,
                lambda r: parse_echo_slots(r, prompt.slot_offsets, shift),
            )
            return check_digits(slots, self.top_logprobs), usage
        json_only = self.mode == "json"
        body = {
            "messages": simulation_messages(explanation, tokens, self.templates, json_only),
            "max_tokens": (4 if json_only else 6) * n + 40,
            "temperature": 0,
        }
        if not json_only:
            body.update({"logprobs": True, "top_logprobs": min(self.top_logprobs, 20)})
            return self.client.call(
                "chat",
                self.model,
                body,
                lambda r: parse_chat_digits(r, n, indexed=True),
                retry_hotter,
            )
        return self.client.call(
            "chat", self.model, body, lambda r: parse_json_values(r, n), retry_hotter
        )


def _probe_echo(response: dict[str, Any]) -> str:
    """``echo`` or ``echo-shifted``, from how well each token matches the top logprob at i versus
    i - 1."""
    try:
        lp = response["choices"][0]["logprobs"]
        tokens, tops = lp["tokens"], lp["top_logprobs"]
    except (KeyError, IndexError, TypeError) as exc:
        raise InvalidOutput("no prompt logprobs") from exc
    if not tokens or not tops or len(tokens) < 8:
        raise InvalidOutput("no prompt logprobs")
    same = shifted = 0
    for i, top in enumerate(tops):
        if not top:
            continue
        best = max(top, key=lambda t: top[t])
        same += best == tokens[i]
        shifted += i + 1 < len(tokens) and best == tokens[i + 1]
    if max(same, shifted) < len(tokens) // 4:
        raise InvalidOutput("the prompt logprobs do not track the prompt")
    return "echo" if same >= shifted else "echo-shifted"


# --------------------------------------------------------------------------------------------------
# scoring
def correlation(pred: np.ndarray, true: np.ndarray) -> float | None:
    """Pearson correlation; None when the truth is constant or the result is not finite (no score
    can be given); 0 when the prediction is constant (it explains nothing)."""
    return correlation_or_reason(pred, true)[0]


def correlation_or_reason(pred: np.ndarray, true: np.ndarray) -> tuple[float | None, str | None]:
    """:func:`correlation` and, when it is None, the one-line reason stored with an ``undefined``
    score."""
    if len(true) < 2:
        return None, f"only {len(true)} held-out token(s): a correlation needs at least 2"
    if not (np.all(np.isfinite(true)) and np.all(np.isfinite(pred))):
        return None, "the activations or predictions are not finite (nan or inf)"
    if float(true.std()) == 0.0:
        return (
            None,
            f"the held-out activations are constant ({float(true[0]):g}) over {len(true)} tokens",
        )
    if float(pred.std()) == 0.0:
        return 0.0, None
    with np.errstate(all="ignore"):
        value = float(np.corrcoef(pred, true)[0, 1])
    if not np.isfinite(value):
        return None, f"the correlation is not finite ({value})"
    return value, None


def target(record: Record, sign: float = 1.0) -> np.ndarray:
    """What a positive-side explanation is scored against: the activation's positive part (negative
    part for ``sign=-1``). Gated MLPs have large negative activations that a 'finds X' explanation
    cannot predict."""
    return np.maximum(sign * np.asarray(record.activations, dtype=np.float64), 0.0)


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the precision-recall curve as average precision (scikit-learn's definition:
    precision at each distinct score threshold, weighted by the recall it adds; tied scores are one
    threshold). A prediction with no information scores the share of positives; None when nothing
    is positive."""
    positives = float(labels.sum())
    if positives == 0:
        return None
    order = np.argsort(-scores, kind="mergesort")
    s, lab = scores[order], labels[order]
    tp, fp = np.cumsum(lab), np.cumsum(1 - lab)
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the last index of each tied run
    precision = tp[last] / (tp[last] + fp[last])
    recall = tp[last] / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def score_predictions(
    preds: Sequence[Sequence[float]],
    records: Sequence[Record],
    max_activation: float,
    pred_scale: float = SCALE_MAX,
    sign: float = 1.0,
) -> dict[str, Any]:
    """Pooled Pearson correlation over every token of the top and random records (as OpenAI's
    "top-and-random" score), per-subset correlations, the average precision against "the neuron
    fires", and R^2 of the predictions mapped to activation units (``pred / pred_scale *
    max_activation``: an absolute-calibration check that can be negative).

    ``score`` (the headline) correlates with the activation's positive part: an explanation says
    what the neuron *finds*, and gated MLPs have large negative activations no such phrase predicts.
    ``score_raw`` correlates with the raw (signed) activation, as OpenAI's and Neuronpedia's scorers
    do, so our numbers can be set beside published ones. ``score_random`` is the correlation on the
    random records alone and ``auprc`` the average precision of the predictions against "the neuron
    fires" (>= :data:`FIRE_THRESHOLD` x max) over every record, quantile ones included: NeuronEval
    (Oikarinen et al., 2025) found that top-and-random correlation alone fails sanity checks, and
    these two ask what it can hide - does the explanation hold on ordinary text, and does it find
    where the neuron fires. ``undefined`` says why ``score`` is None (constant or non-finite
    held-out activations)."""
    if not records:
        raise ValueError("no held-out records to score on")
    p = [np.asarray(x, dtype=np.float64) for x in preds]
    t = [target(r, sign) for r in records]
    for a, b in zip(p, t, strict=True):
        if a.shape != b.shape:
            raise ValueError("prediction and record lengths differ")
    headline = [i for i, r in enumerate(records) if r.kind != "quantile"] or list(range(len(p)))
    allp = np.concatenate([p[i] for i in headline])
    allt = np.concatenate([t[i] for i in headline])
    raw = np.concatenate(
        [sign * np.asarray(records[i].activations, dtype=np.float64) for i in headline]
    )
    score, reason = correlation_or_reason(allp, allt)
    everything, truth = np.concatenate(p), np.concatenate(t)
    out: dict[str, Any] = {
        "score": score,
        "undefined": reason,
        "score_raw": correlation(allp, raw),
        "n_tokens": int(len(allt)),
        "auprc": (
            average_precision(everything, (truth >= FIRE_THRESHOLD * abs(max_activation)) * 1.0)
            if np.all(np.isfinite(everything)) and np.all(np.isfinite(truth))
            else None
        ),
    }
    for kind in ("top", "random"):
        idx = [i for i, r in enumerate(records) if r.kind == kind]
        out[f"score_{kind}"] = (
            correlation(np.concatenate([p[i] for i in idx]), np.concatenate([t[i] for i in idx]))
            if idx
            else None
        )
    sst = float(((allt - allt.mean()) ** 2).sum()) if np.all(np.isfinite(allt)) else 0.0
    mapped = allp / pred_scale * max_activation
    r2 = 1.0 - float(((allt - mapped) ** 2).sum()) / sst if sst > 0 else None
    out["r2"] = r2 if r2 is not None and np.isfinite(r2) else None
    return out


def simulate_score(
    sim: Simulator, explanation: str, records: list[Record], max_act: float, sign: float
) -> tuple[dict[str, Any], Usage]:
    """Simulate ``explanation`` on each held-out record and score the predictions against the real
    activations (:func:`score_predictions`); also returns what the simulator's calls used. The
    result's ``simulation`` is the compiled rule (JSON) in ``rule`` mode."""
    preds, usage, simulation = sim.simulate_records(explanation, [r.tokens for r in records])
    result = score_predictions(preds, records, max_act, SCALE_MAX, sign)
    result["simulation"] = simulation
    return result, usage
