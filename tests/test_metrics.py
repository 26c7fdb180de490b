"""BLEU, ROUGE and exact match against values worked out by hand on small fixed examples."""

from __future__ import annotations

import math

import pytest

from tuner import metrics

REFERENCE = "the cat sat on a mat"


def test_bleu_of_one_pair_is_the_geometric_mean_of_its_ngram_precisions():
    # "the cat sat on the mat" against "the cat sat on a mat", equal lengths (no brevity penalty):
    # 1-grams 5/6, 2-grams 3/5, 3-grams 2/4, 4-grams 1/3
    expected = 100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25
    assert metrics.bleu(["the cat sat on the mat"], [REFERENCE]) == pytest.approx(expected, abs=1e-6)


def test_bleu_of_a_short_hypothesis_pays_the_brevity_penalty():
    # "the cat sat on" (4 of the reference's 6 words): every n-gram matches, penalty exp(1 - 6/4)
    assert metrics.bleu(["the cat sat on"], [REFERENCE]) == pytest.approx(100 * math.exp(1 - 6 / 4), abs=1e-6)
    assert metrics.bleu([REFERENCE], [REFERENCE]) == pytest.approx(100.0)


def test_rouge_f1_by_hand():
    scores = metrics.rouge(["the cat sat"], ["the cat sat on the mat"])
    # 3 of 3 hypothesis unigrams and 3 of 6 reference unigrams: F1 = 2 * 1 * 0.5 / 1.5
    assert scores["rouge1"] == pytest.approx(2 / 3)
    # 2 of 2 hypothesis bigrams, 2 of 5 reference bigrams: F1 = 2 * 1 * 0.4 / 1.4
    assert scores["rouge2"] == pytest.approx(0.8 / 1.4)
    assert scores["rougeL"] == pytest.approx(2 / 3)  # the longest common subsequence is 3 words


def test_rouge_averages_over_pairs():
    scores = metrics.rouge(["the cat sat", "dogs bark"], ["the cat sat", "a bird sings"])
    assert scores == {"rouge1": pytest.approx(0.5), "rouge2": pytest.approx(0.5), "rougeL": pytest.approx(0.5)}


def test_exact_match_is_the_share_of_equal_pairs_after_normalising_case_and_spaces():
    hypotheses = ["Paris", "  the  Cat\n", "Paris.", "Lyon"]
    references = ["paris", "the cat", "Paris", "Lyon is"]
    assert metrics.exact_match(hypotheses, references) == pytest.approx(2 / 4)
    assert metrics.exact_match(["a"], ["a"]) == 1.0


def test_unpaired_inputs_are_refused():
    with pytest.raises(ValueError, match="one reference per hypothesis"):
        metrics.bleu(["a b c"], [])
    with pytest.raises(ValueError, match="at least one pair"):
        metrics.rouge([], [])
