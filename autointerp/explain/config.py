"""What determines an explanation and its score: :class:`ExplainConfig`, whose hash keys every
stored explanation and score row.

It sits in a module of its own, below the records, the neuron worker and the layer runner, because
all of them read it and the CLI reads its defaults for the options' help; it imports nothing of the
stage. Its fields and :meth:`ExplainConfig.identity` are the identity of stored results: a field
added later must leave the hash of results made without it unchanged (see ``identity``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from autointerp.config import check_int, config_identity, identity_hash
from autointerp.errors import UserError
from autointerp.explain.prompts import SCALE_MAX

#: 2: the rule simulator asks for JSON mode; an explanation copying a few-shot answer is refused.
#: 3: best-of-n falls back on the shown examples when the unseen ones cannot tell candidates apart.
#: 4: token-aware rules; every held-out record scored (rule mode); candidates written from the
#: token statistics and the N2G graph, feedback rounds and a restated graph compete with the LLM's
#: explanation on the validation split.
EXPLAIN_VERSION = 4
#: Held-out records of each kind a token-by-token simulator is scored on when ``sim_top`` /
#: ``sim_random`` are not given: each record is an LLM call there (the rule simulator is scored on
#: every held-out record, at no cost).
LLM_SIM_RECORDS = 5


@dataclass
class ExplainConfig:
    """Everything that determines explanations and scores; its hash keys the stored rows."""

    explainer_model: str = ""
    simulator_model: str = ""
    prompt_version: str = ""
    explain_records: int = 8  # top training examples shown to the explainer
    explain_before: int = 12  # tokens shown before each example's peak ...
    explain_after: int = 4  # ... and after it
    #: held-out top / random examples simulated; None: every one the harvest kept under the rule
    #: simulator (quantile records too, for AUPRC), LLM_SIM_RECORDS each under an LLM simulator
    sim_top: int | None = None
    sim_random: int | None = None
    sim_window: int = (
        32  # tokens per simulated record (top: ending 4 after the peak; random: from the start)
    )
    sim_logprobs: int = 15
    simulator_mode: str = "rule"
    use_n2g: bool = True
    n2g_paths: int = 8
    negative: bool = False
    baseline: bool = True
    #: best-of-n: explanations sampled per neuron, the best on the validation records kept
    candidates: int = 1
    #: feedback rounds (rule simulator): the explainer is shown where its explanation's rule missed
    #: and fired wrongly on validation records and asked for a revision, this many times
    rounds: int = 2
    #: candidates written with no LLM (token statistics, N2G graph paths, the single-token
    #: template) compete with the LLM's on validation (rule simulator); False: the LLM's alone
    written_candidates: bool = True
    #: the LLM restates the best graph-written candidate in plain words, as one more candidate
    restate: bool = True
    #: output-side evidence: the N tokens the neuron's output promotes most and the N it suppresses
    #: (direct logit effect, stored by ``autointerp weights``) are shown to the explainer; 0: none
    output_tokens: int = 0
    explainer_max_tokens: int = 60
    max_prompt_chars: int = (
        7000  # ~2.5k tokens: fits a 4k-token local context with room for the answer
    )
    # not part of the identity
    concurrency: int = field(default=1, metadata={"hashed": False})

    def __post_init__(self) -> None:
        lowest = {
            "--explain-records": (self.explain_records, 1),
            "--concurrency": (self.concurrency, 1),
            "--rounds": (self.rounds, 0),
            "--candidates": (self.candidates, 1),
            "--output-tokens": (self.output_tokens, 0),
            "explain_before": (self.explain_before, 0),
            "explain_after": (self.explain_after, 0),
            "sim_window": (self.sim_window, 1),
            "sim_logprobs": (self.sim_logprobs, 1),
            "n2g_paths": (self.n2g_paths, 0),
            "explainer_max_tokens": (self.explainer_max_tokens, 1),
            "max_prompt_chars": (self.max_prompt_chars, 1),
        }
        for option, (value, low) in lowest.items():
            check_int(value, option, low)
        for option, value in (("--sim-top", self.sim_top), ("--sim-random", self.sim_random)):
            if value is not None:
                check_int(value, option, 0)
        if self.sim_top == 0 and self.sim_random == 0:
            raise UserError(
                "--sim-top and --sim-random are both 0, so there would be no held-out "
                "text to score explanations on; give at least one of them."
            )

    def identity(self) -> dict[str, Any]:
        """The hashed settings. Options added later are left out while at their "off" default, so
        results stored before the option existed keep their hash (they were made without it)."""
        out = config_identity(self, explain_version=EXPLAIN_VERSION, scale_max=SCALE_MAX)
        if not self.output_tokens:
            del out["output_tokens"]
        return out

    def config_hash(self) -> str:
        return identity_hash(self.identity())

    @property
    def rule_mode(self) -> bool:
        """Whether explanations are simulated by compiled rules: then every held-out record is
        scored, and written candidates and feedback rounds compete (each costs no simulation
        call)."""
        return self.simulator_mode == "rule"

    def heldout_counts(self) -> tuple[int | None, int | None, bool]:
        """How many held-out top and random records are scored (None: all) and whether the
        quantile records are too."""
        if self.rule_mode:
            return self.sim_top, self.sim_random, True
        default = LLM_SIM_RECORDS
        top = default if self.sim_top is None else self.sim_top
        return top, default if self.sim_random is None else self.sim_random, False

    def with_models(self, explainer: str, simulator: str) -> ExplainConfig:
        """This config for the LLMs named (a local server's names are known only once it runs)."""
        return dataclasses.replace(self, explainer_model=explainer, simulator_model=simulator)


def check_config(cfg: ExplainConfig) -> None:
    """Refuse settings that leave nothing to score, before any LLM call is paid for (the numbers
    the user gives are checked when the config is made; see ``ExplainConfig.__post_init__``)."""
    if cfg.sim_window < 2:
        raise UserError("The simulation window must be at least 2 tokens.")
