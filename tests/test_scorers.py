"""Cheap scorers beside simulation: AUROC and rank correlation maths, which windows count as firing,
and - with the packaged sentence model, and with the local LLM answering yes or no per window - a
right explanation separating firing windows from the others better than a wrong one."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import ANIMALS, llm_client

from autointerp.eval.scorers import (
    auroc,
    detection_score,
    embedding_score,
    fires,
    parse_detection,
)
from autointerp.eval.stats import spearman
from autointerp.explain.prompts import Record
from autointerp.explain.simulate import average_precision, score_predictions
from autointerp.llm.client import LLMFailure


def _windows() -> list[Record]:
    """One window where the neuron fires on animal names, three where it does not."""
    tokens, animals = ANIMALS
    firing = [Record(tokens, [5.0 if t in animals else 0.0 for t in tokens])]
    others = [
        "def parse(path):\n    return open(path).read()",
        "The interest rate rose by 0.25 percent in March.",
        "Click the button to save your settings.",
    ]
    return firing + [Record([text], [0.0]) for text in others]


def test_auroc_counts_pairs_and_ties_half() -> None:
    assert auroc([0.9, 0.8, 0.1, 0.2], [True, True, False, False]) == 1.0
    assert auroc([0.1, 0.2, 0.9, 0.8], [True, True, False, False]) == 0.0
    assert auroc([0.5, 0.5], [True, False]) == 0.5
    assert auroc([0.3, 0.2], [True, True]) is None  # one kind of window: undefined, not 0.5


def test_spearman_uses_ranks() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 1000]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 2, 3], [5, 5, 6, 7]) == pytest.approx(1.0)  # ties share a rank
    assert spearman([1, 2], [1, 2]) is None and spearman([1, 1, 1], [1, 2, 3]) is None


def test_a_window_fires_at_a_fraction_of_the_neurons_max() -> None:
    records = [Record(["a", "b"], [0.0, 3.0]), Record(["c"], [2.9]), Record(["d"], [-9.0])]
    assert fires(records, 10.0) == [True, False, False]


@pytest.mark.slow  # loads the 420 MB embedding model
def test_a_right_explanation_separates_firing_windows_better_than_a_wrong_one() -> None:
    records = _windows()
    right = embedding_score("names of animals", records, 5.0)
    wrong = embedding_score("Python source code", records, 5.0)
    assert right is not None and wrong is not None and right > wrong
    assert right == 1.0


def test_a_detection_reply_is_read_as_yes_or_no() -> None:
    def reply(text: str) -> dict:  # type: ignore[type-arg]
        return {"choices": [{"message": {"content": text}}]}

    assert parse_detection(reply("Yes.")) is True and parse_detection(reply(" no")) is False
    assert parse_detection(reply("**YES**, it does")) is True
    with pytest.raises(Exception, match="Yes or No"):
        parse_detection(reply("The text mentions a cat."))


def test_detection_asks_once_per_window_and_scores_the_answers_as_auroc(fault_server) -> None:  # type: ignore[no-untyped-def]
    # the keyword stand-in answers Yes when a word of the description is in the window
    server = fault_server("keyword")
    client = llm_client(server.url)
    records = _windows()
    score, usage = detection_score(client, "fault-model", "cat", records, 5.0)
    assert score == 1.0 and server.requests == len(records) and usage.calls == len(records)
    assert detection_score(client, "fault-model", "zebra", records, 5.0)[0] == 0.5  # all No
    # "the": Yes for the firing window and two of the others: TPR 1, TNR 1/3
    assert detection_score(client, "fault-model", "the", records, 5.0)[0] == pytest.approx(2 / 3)
    asked = server.requests
    assert detection_score(client, "fault-model", "cat", records[:1], 5.0)[0] is None
    assert server.requests == asked  # one kind of window: undefined, and nothing asked


def test_a_detection_answer_that_is_not_yes_or_no_is_a_failure_with_its_reason(
    fault_server,
) -> None:  # type: ignore[no-untyped-def]
    server = fault_server("not-json")  # chatty prose where one word was asked for
    with pytest.raises(LLMFailure, match="Yes or No"):
        detection_score(llm_client(server.url), "fault-model", "cat", _windows(), 5.0)


@pytest.mark.slow  # the packaged 1.5B (the default simulator) behind the local server
def test_real_detection_separates_firing_windows_better_for_a_right_explanation() -> None:
    from autointerp.llm.local_server import local_server

    # the 1.5B: here the 0.5B answered No for the animal window given "names of animals" (0.5)
    with local_server("qwen2.5-coder-1.5b", prompt_logprobs=False) as (url, model):
        client = llm_client(url, timeout=300)
        right, _ = detection_score(client, model, "names of animals", _windows(), 5.0)
        wrong, _ = detection_score(client, model, "percentages", _windows(), 5.0)
    assert right is not None and wrong is not None
    assert right > wrong, (right, wrong)


def test_average_precision_is_scikit_learns_and_counts_ties_as_one_threshold() -> None:
    labels = np.array([1.0, 0.0, 1.0, 0.0, 0.0])
    # perfect ranking: 1.0; a constant prediction: the share of positives
    assert average_precision(np.array([9.0, 0, 8, 0, 0]), labels) == 1.0
    assert average_precision(np.zeros(5), labels) == pytest.approx(0.4)
    # one positive first, then a tie of one positive and one negative: 0.5 * 1 + 0.5 * 2/3
    assert average_precision(np.array([9.0, 5, 5, 0, 0]), labels) == pytest.approx(0.5 + 1 / 3)
    assert average_precision(np.ones(3), np.zeros(3)) is None


def test_auprc_counts_quantile_records_and_the_headline_does_not() -> None:
    top = Record(["a", "b", "c"], [4.0, 0.0, 0.0], "top")
    rnd = Record(["a", "x", "y"], [4.0, 0.0, 0.0], "random")
    quant = Record(["a", "q", "r"], [0.0, 4.0, 0.0], "quantile")  # a miss and a false alarm
    preds = [[9.0, 0, 0], [9.0, 0, 0], [9.0, 0, 0]]
    both = score_predictions(preds, [top, rnd, quant], 4.0)
    assert both["score"] == pytest.approx(1.0)  # top and random only
    assert both["auprc"] < 1.0  # the quantile record's miss counts here
    assert score_predictions(preds[:2], [top, rnd], 4.0)["auprc"] == pytest.approx(1.0)
