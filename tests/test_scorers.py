"""Cheap scorers beside simulation: AUROC and rank correlation maths, which windows count as firing,
and - with the packaged sentence model - a right explanation separating firing windows from the
others better than a wrong one."""

from __future__ import annotations

import pytest
from helpers import ANIMALS

from autointerp.eval.scorers import auroc, embedding_score, fires
from autointerp.eval.stats import spearman
from autointerp.explain.prompts import Record


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
    tokens, animals = ANIMALS
    firing = [Record(tokens, [5.0 if t in animals else 0.0 for t in tokens])]
    others = [
        "def parse(path):\n    return open(path).read()",
        "The interest rate rose by 0.25 percent in March.",
        "Click the button to save your settings.",
    ]
    records = firing + [Record([text], [0.0]) for text in others]
    right = embedding_score("names of animals", records, 5.0)
    wrong = embedding_score("Python source code", records, 5.0)
    assert right is not None and wrong is not None and right > wrong
    assert right == 1.0
