"""``autointerp eval``: how good are the explanations of a model, on neurons nobody picked, against
controls.

* **Sample.** A seeded random sample of N neurons per layer among those that fire at all (max
  activation > 0) - never the top ones by activation, which flatter every method. The seed and layer
  fix the sample.
* **Missing stages** (N2G graphs, explanations and scores) run for the sampled neurons only; what is
  stored under the same configs is reused, so a rerun costs nothing.
* **Methods**: the LLM explanation, the token-lookup baseline and the N2G graph, each scored by
  correlation on the same held-out records (:mod:`autointerp.explain.simulate`).
* **Controls**: ``shuffled`` - each neuron scored with the explanation of another sampled neuron of
  the same layer (a fixed-point-free seeded permutation): what an explanation carrying no
  information about *this* neuron scores on these records; ``known_true_description`` /
  ``known_explanation`` - the newest ``calibrate`` result of the model (the simulator's ceiling and
  the explainer's recovery when the answer is known).
* **Summaries**: n, mean, median, bootstrap 95% interval, fraction >= 0.5, failed and undefined
  counts (never averaged in), and paired differences per neuron (explanation - baseline,
  explanation - shuffled, explanation - n2g) with bootstrap intervals: the paired view removes the
  neuron-to-neuron spread.
* **Cheap scorers** (optional, :mod:`autointerp.eval.scorers`): embedding and detection scores of
  each explanation on the same held-out windows, with their Spearman correlation with simulation
  and their cost per neuron - whether a cheaper number could stand in for simulation.

Every evaluation is stored (config + hash + result) as an ``eval`` run, so a later explainer can be
compared.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass
from typing import Any

from tqdm import tqdm

from autointerp.config import identity_hash
from autointerp.errors import UserError
from autointerp.eval.scorers import detection_score, embedding_score
from autointerp.eval.stats import paired, spearman, summarize
from autointerp.explain.prompts import Templates
from autointerp.explain.run import ExplainConfig, JobRunner, explain_layers, heldout_records
from autointerp.explain.simulate import Simulator, simulate_score
from autointerp.llm.client import LLMClient, LLMFailure, Usage
from autointerp.store import Store

METHODS = ("explanation", "baseline", "n2g")
#: What each cheap scorer's number is (stored with its agreement with simulation).
SCORER_SCORES = {
    "embedding": "AUROC of cosine(explanation, window) against 'the neuron fires here'",
    "detection": (
        "AUROC of the LLM's yes/no 'does this window contain what the explanation names?' against"
        " 'the neuron fires here' (= balanced accuracy)"
    ),
}


@dataclass
class EvalConfig:
    layers: list[int]
    sample: int = 16
    seed: int = 0
    #: also score each explanation with the embedding scorer (:mod:`autointerp.eval.scorers`) and
    #: report how well it agrees with simulation
    embedding: bool = False
    #: also score each explanation with the detection scorer (one LLM call per held-out window,
    #: the simulator's model) and report how well it agrees with simulation
    detection: bool = False


def sample_neurons(store: Store, model: str, layer: int, n: int, seed: int) -> list[int]:
    """``n`` neurons of ``layer`` drawn uniformly (seeded by seed and layer) among those that
    fire."""
    run = store.latest_complete_run(model, layer)
    if run is None:
        raise UserError(
            f"Layer {layer} of {model} has not been harvested yet; run `autointerp harvest --model "
            f"{model} --layers {layer}` first."
        )
    firing = store.firing_neurons(run["id"], layer)
    rng = random.Random(f"autointerp-eval:{seed}:{layer}")
    return sorted(rng.sample(firing, min(n, len(firing))))


def derangement(items: list[int], seed: int) -> dict[int, int]:
    """item -> another item (never itself): a seeded shuffle, each taking the next one's
    explanation."""
    order = list(items)
    random.Random(f"autointerp-shuffle:{seed}").shuffle(order)
    return (
        {order[i]: order[(i + 1) % len(order)] for i in range(len(order))} if len(order) > 1 else {}
    )


def shuffled_scores(
    store: Store,
    run_id: int,
    layer: int,
    explanations: dict[int, str],
    cfg: ExplainConfig,
    sim: Simulator,
    seed: int,
    max_activation: dict[int, float],
) -> dict[int, dict[str, Any]]:
    """Neuron -> ``{"score", "status", "from", "error"}``: scored with another sampled neuron's
    explanation."""
    partner = derangement(sorted(explanations), seed)
    out: dict[int, dict[str, Any]] = {}
    for n, other in partner.items():
        records = heldout_records(store, run_id, layer, n, cfg)
        row: dict[str, Any] = {"from": other, "score": None, "error": None}
        if not records:
            row.update(status="failed", error="no held-out records")
        else:
            try:
                result, _ = simulate_score(
                    sim, explanations[other], records, max_activation[n], 1.0
                )
                row["score"] = result["score"]
                row["status"] = "ok" if result["score"] is not None else "undefined"
                row["error"] = result.get("undefined")
            except LLMFailure as exc:
                row.update(status="failed", error=exc.reason)
        out[n] = row
    return out


def evaluate(
    store: Store,
    model: str,
    cfg: EvalConfig,
    explain_cfg: ExplainConfig,
    client: LLMClient,
    templates: Templates,
    build_graphs: Any = None,
    progress: bool = True,
    runner: JobRunner | None = None,
) -> dict[str, Any]:
    """Run the evaluation (see the module docstring); ``build_graphs(layer, neurons)`` makes missing
    N2G graphs (the caller owns the subject model); ``runner`` runs the explain step (Ray tasks:
    :func:`autointerp.executors.explain_runner`; default: this process). Returns and stores the
    result."""
    if cfg.sample < 2:
        raise UserError(
            "--sample must be at least 2 (the shuffled control needs another neuron of the layer)."
        )
    samples = {
        layer: sample_neurons(store, model, layer, cfg.sample, cfg.seed) for layer in cfg.layers
    }
    runs = {layer: store.latest_complete_run(model, layer) for layer in cfg.layers}
    if build_graphs is not None:
        for layer, neurons in samples.items():
            have = {
                r["neuron"]
                for r in store.db.query(
                    "select distinct neuron from graphs where run_id = ? and layer = ?",
                    [runs[layer]["id"], layer],
                )
            }
            missing = [n for n in neurons if n not in have]
            if missing:
                build_graphs(layer, missing)
    explain_layers(
        store,
        model,
        cfg.layers,
        None,
        explain_cfg,
        client,
        templates,
        progress=progress,
        neurons=samples,
        runner=runner,
    )
    config_hash = explain_cfg.config_hash()
    sim = Simulator(
        client,
        explain_cfg.simulator_model,
        templates,
        explain_cfg.simulator_mode,
        explain_cfg.sim_logprobs,
    )
    neurons_out: list[dict[str, Any]] = []
    scorers = [name for name in SCORER_SCORES if getattr(cfg, name)]
    per_method: dict[str, dict[tuple[int, int], float | None]] = {
        m: {} for m in (*METHODS, "shuffled", *scorers)
    }
    scorer_seconds = dict.fromkeys(scorers, 0.0)
    scorer_usage = {name: Usage() for name in scorers}
    reasons: dict[str, dict[str, int]] = {name: {} for name in scorers}
    counts: dict[str, dict[str, int]] = {m: {"failed": 0, "undefined": 0} for m in per_method}
    bar = tqdm(
        total=sum(len(v) for v in samples.values()),
        unit="neuron",
        disable=not progress,
        desc=f"shuffled control {model}",
        dynamic_ncols=True,
    )
    for layer, neurons in samples.items():
        run_id = runs[layer]["id"]
        rows = {n: store.config_results(run_id, layer, n, config_hash) for n in neurons}
        texts = {
            n: e["llm"]["text"]
            for n, (e, _) in rows.items()
            if e.get("llm", {}).get("status") == "ok"
        }
        maxima = {
            n: float((store.neuron(run_id, layer, n) or {"max": 0.0})["max"]) for n in neurons
        }
        shuffled = shuffled_scores(
            store, run_id, layer, texts, explain_cfg, sim, cfg.seed + layer, maxima
        )
        bar.update(len(neurons))
        for n in neurons:
            expl, scores = rows[n]
            entry: dict[str, Any] = {
                "layer": layer,
                "neuron": n,
                "scores": {},
                "status": {},
                "explanation": texts.get(n),
                "baseline": (expl.get("baseline") or {}).get("text"),
            }
            for method in METHODS:
                row = scores.get(method)
                status = row["status"] if row else "missing"
                if method == "explanation" and row is None and "llm" in expl:
                    status = expl["llm"]["status"]
                entry["status"][method] = status
                entry["scores"][method] = row["score"] if row and status == "ok" else None
                if row and method == "explanation":
                    entry["scores"]["explanation_raw"] = row.get("score_raw")
            sh = shuffled.get(n)
            entry["status"]["shuffled"] = sh["status"] if sh else "missing"
            entry["scores"]["shuffled"] = sh["score"] if sh and sh["status"] == "ok" else None
            if sh:
                entry["shuffled_from"] = sh["from"]
            for name in scorers:
                t0 = time.perf_counter()
                value, status = None, "missing"
                if n in texts:
                    held = heldout_records(store, run_id, layer, n, explain_cfg)
                    try:
                        if name == "embedding":
                            value = embedding_score(texts[n], held, maxima[n])
                        else:
                            value, spent = detection_score(
                                client, explain_cfg.simulator_model, texts[n], held, maxima[n]
                            )
                            scorer_usage[name].add(spent)
                        status = "ok" if value is not None else "undefined"
                    except LLMFailure as exc:  # recorded with its reason, never a number
                        status = "failed"
                        entry.setdefault("reasons", {})[name] = exc.reason
                        reasons[name][exc.reason] = reasons[name].get(exc.reason, 0) + 1
                scorer_seconds[name] += time.perf_counter() - t0
                entry["scores"][name] = value
                entry["status"][name] = status
            for method in per_method:
                status = entry["status"][method]
                if status == "ok":
                    per_method[method][(layer, n)] = entry["scores"][method]
                elif status in ("failed", "undefined"):
                    counts[method][status] += 1
            neurons_out.append(entry)
    bar.close()
    methods = {
        m: summarize(list(per_method[m].values()), **counts[m], seed=cfg.seed) for m in per_method
    }
    known = store.latest_evaluation(model, "calibrate")
    if known is not None:
        feats = known["result"]["features"]
        for key, name in (
            ("true_score", "known_true_description"),
            ("explanation_score", "known_explanation"),
        ):
            values = [f[key] for f in feats if f[key] is not None]
            methods[name] = summarize(
                values, failed=sum(f[key] is None for f in feats), seed=cfg.seed
            )
            methods[name]["calibrate_run_id"] = known["run_id"]
    expl = per_method["explanation"]
    result: dict[str, Any] = {
        "model": model,
        "layers": cfg.layers,
        "sample": cfg.sample,
        "seed": cfg.seed,
        "explainer_model": explain_cfg.explainer_model,
        "simulator_model": explain_cfg.simulator_model,
        "simulator_mode": explain_cfg.simulator_mode,
        "prompt_version": explain_cfg.prompt_version,
        "explain_config_hash": config_hash,
        "score": (
            "correlation with the activation's positive part (README: Explanations and "
            "simulation scores)"
        ),
        "methods": methods,
        "paired": {
            f"explanation-{other}": paired(expl, per_method[other], cfg.seed)
            for other in ("baseline", "shuffled", "n2g")
        },
        "neurons": neurons_out,
    }
    if scorers:
        result["scorer_agreement"] = {
            name: _agreement(
                per_method[name],
                expl,
                scorer_seconds[name],
                scorer_usage[name],
                reasons[name],
                SCORER_SCORES[name],
            )
            for name in scorers
        }
    config = {
        "eval": asdict(cfg),
        "explain": explain_cfg.identity(),
        "explain_config_hash": config_hash,
    }
    result["run_id"] = store.save_evaluation(model, "eval", config, identity_hash(config), result)
    return result


def _agreement(
    scores: dict[tuple[int, int], float | None],
    simulation: dict[tuple[int, int], float | None],
    seconds: float,
    usage: Usage,
    reasons: dict[str, int],
    what: str,
) -> dict[str, Any]:
    """A cheap scorer beside simulation: Spearman over the neurons both scored, its cost per
    neuron scored (seconds; LLM calls and tokens, cached answers counted apart), why it failed."""
    both = [k for k, v in scores.items() if v is not None and simulation.get(k) is not None]
    per = max(1, len(scores))
    return {
        "n": len(both),
        "spearman_with_simulation": spearman(
            [scores[k] for k in both], [simulation[k] for k in both]
        ),
        "seconds_per_neuron": seconds / per,
        "llm_calls_per_neuron": (usage.calls + usage.cached_calls) / per,
        "prompt_tokens_per_call": usage.prompt_tokens / usage.calls if usage.calls else None,
        "cached_calls": usage.cached_calls,
        "failure_reasons": reasons,
        "score": what,
    }
