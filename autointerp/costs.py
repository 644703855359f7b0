"""How long a whole-layer run (``autointerp run``) will take, said before it starts, from what this
database measured when the same model last ran here.

Why measured and not modelled: a harvest, a graph and an explanation each cost what this machine,
this device and this LLM endpoint make them cost, over a range of 50x (BENCHMARKS.md: N2G is 0.2 s a
neuron on an H200 and 4-11 s on the 2-core CPU; an explanation 25 s with the local 1.5B on 2
threads, a fraction of that from a hosted model). Every stage already records its own time beside
its results (:mod:`autointerp.store.measurements`), so the estimate reads those: the newest harvest
run's tokens per second, the stored graphs' seconds per neuron (of the same layer where there are
some: on a CPU N2G grows with depth), the stored explanations' seconds per neuron by the same
explainer model. Each number says where it came from.

Where this database has no measurement yet, the estimate says so and uses an assumption written
here (the ``ASSUMED_*`` constants, each from a BENCHMARKS.md figure of the 2-core CPU), labelled as
an assumption wherever it is printed. They are the slow end: on a GPU or with a hosted LLM the run
is faster than assumed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from autointerp.store import Store

#: Harvest tokens per second assumed with no measurement: Gemma-3-270M, 3 layers, the 2-core CPU
#: (BENCHMARKS.md, "harvest throughput": 354-455 tokens/s).
ASSUMED_HARVEST_TOKENS_PER_SECOND = 400.0
#: N2G seconds per neuron assumed with no measurement: Gemma-3-270M's middle layer on the 2-core
#: CPU (BENCHMARKS.md: 3.9 / 6.1 / 11.0 s at layers 3 / 9 / 15; 0.2 s on an H200).
ASSUMED_GRAPH_SECONDS = 6.0
#: Explanation seconds per neuron assumed with no measurement: the local Qwen2.5-Coder-1.5B on 2
#: threads (BENCHMARKS.md, "Explanations and simulation": 24.1 s for the explanation call).
ASSUMED_EXPLAIN_SECONDS = 25.0


@dataclass(frozen=True)
class StageCost:
    """One line of an estimate: ``units`` of work (tokens or neurons; None: not known before the
    run) at ``seconds_per_unit``, and where that rate came from (``source``; ``measured`` False:
    an assumption)."""

    stage: str
    units: int | None
    unit: str
    seconds_per_unit: float | None
    source: str
    measured: bool

    @property
    def seconds(self) -> float | None:
        if self.units is None or self.seconds_per_unit is None:
            return None
        return self.units * self.seconds_per_unit

    def as_json(self) -> dict[str, Any]:
        seconds = self.seconds
        return {
            "stage": self.stage,
            "units": self.units,
            "unit": self.unit,
            "seconds_per_unit": self.seconds_per_unit,
            "seconds": None if seconds is None else round(seconds, 1),
            "measured": self.measured,
            "source": self.source,
        }


def total_seconds(costs: list[StageCost]) -> tuple[float, bool]:
    """The estimate's seconds, and whether every line is known (else the total is a lower
    bound)."""
    known = [c.seconds for c in costs if c.seconds is not None]
    return float(sum(known)), len(known) == len(costs)


def harvest_cost(
    store: Store | None, model: str, layers: list[int], tokens: int | None
) -> StageCost:
    """Harvesting ``layers`` on ``tokens`` tokens (None: the whole corpus, not counted before it is
    read), at the rate of the newest harvest of ``model`` in ``store``."""
    stage = f"harvest layers {','.join(map(str, layers))}"
    timings = store.harvest_timings(model) if store is not None else []
    if timings:
        t = timings[-1]
        rate = t["seconds"] / t["tokens"]
        source = (
            f"measured: harvest run {t['id']} of {model} here, {t['tokens']:,} tokens of layers"
            f" {','.join(map(str, t['layers']))} in {t['seconds']:.1f} s"
            f" ({t['tokens'] / t['seconds']:,.0f} tokens/s; deeper or more layers cost more)"
        )
        return StageCost(stage, tokens, "token", rate, source, True)
    source = (
        f"no measurement yet; assumed {ASSUMED_HARVEST_TOKENS_PER_SECOND:.0f} tokens/s"
        " (Gemma-3-270M on a 2-core CPU, BENCHMARKS.md)"
    )
    return StageCost(stage, tokens, "token", 1 / ASSUMED_HARVEST_TOKENS_PER_SECOND, source, False)


def graph_costs(store: Store | None, model: str, todo: dict[int, int | None]) -> list[StageCost]:
    """N2G for ``todo`` (layer -> neurons still to graph; None: not known before the harvest), at
    the stored graphs' mean seconds per neuron: the same layer's where it has graphs, else the
    model's over every layer, else the assumption."""
    timings = store.graph_timings(model) if store is not None else {}
    graphs = sum(t["graphs"] for t in timings.values())
    overall = sum(t["graphs"] * t["seconds"] for t in timings.values()) / graphs if graphs else None
    out = []
    for layer, n in todo.items():
        stage = f"graph layer {layer}"
        if layer in timings:
            t = timings[layer]
            source = (
                f"measured: {t['graphs']:,} graphs of layer {layer} of {model} here,"
                f" {t['seconds']:.2f} s/neuron"
            )
            out.append(StageCost(stage, n, "neuron", t["seconds"], source, True))
        elif overall is not None:
            source = (
                f"measured: {graphs:,} graphs of other layers of {model} here, {overall:.2f}"
                " s/neuron (on a CPU deeper layers cost more)"
            )
            out.append(StageCost(stage, n, "neuron", overall, source, True))
        else:
            source = (
                f"no measurement yet; assumed {ASSUMED_GRAPH_SECONDS:g} s/neuron (Gemma-3-270M's"
                " middle layer on a 2-core CPU, BENCHMARKS.md; ~0.2 s on a GPU)"
            )
            out.append(StageCost(stage, n, "neuron", ASSUMED_GRAPH_SECONDS, source, False))
    return out


def explain_cost(store: Store | None, model: str, explainer: str, neurons: int | None) -> StageCost:
    """Explaining and scoring ``neurons`` with ``explainer``, at the stored explanations' mean
    seconds per neuron by that explainer for ``model``."""
    t = store.explanation_timings(model, explainer) if store is not None else {"neurons": 0}
    if t["neurons"]:
        share = f", {t['templates']} of them single-token templates with no LLM call"
        source = (
            f"measured: {t['neurons']:,} explanations of {model} by {explainer} here"
            f"{share if t['templates'] else ''}, {t['seconds']:.1f} s and"
            f" {t['tokens']:,.0f} LLM tokens per neuron"
        )
        return StageCost("explain + score", neurons, "neuron", t["seconds"], source, True)
    source = (
        f"no measurement yet for {explainer}; assumed {ASSUMED_EXPLAIN_SECONDS:g} s/neuron (the"
        " local 1.5B on a 2-core CPU, BENCHMARKS.md; single-token neurons take ~0 s)"
    )
    return StageCost("explain + score", neurons, "neuron", ASSUMED_EXPLAIN_SECONDS, source, False)
