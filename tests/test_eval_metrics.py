"""Metrics: Wilson and Newcombe intervals on published values, BLEU / self-BLEU on hand-computed values."""

import math

import numpy as np
import pytest

from ssp.eval.metrics import (
    Rate,
    diversity,
    intervals_overlap,
    mcnemar_exact,
    mean_pairwise_distance,
    newcombe_difference,
    self_bleu,
    sentence_bleu,
    tokenize,
    wilson_interval,
)


# Newcombe (1998a), "Two-sided confidence intervals for the single proportion", Stat Med 17:857, Table I,
# method 3 (score interval without continuity correction = Wilson).
@pytest.mark.parametrize(
    "k, n, low, high",
    [
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_matches_newcombe_table(k, n, low, high):
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(low, abs=1e-4)
    assert hi == pytest.approx(high, abs=1e-4)


def test_wilson_edges():
    assert wilson_interval(0, 0) is None
    lo, hi = wilson_interval(10, 10)
    assert hi == 1.0 and lo == pytest.approx(0.7225, abs=1e-4)  # mirror of 0/10 upper bound 0.2775
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(1 - hi) and lo == pytest.approx(0.2366, abs=1e-4)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


# Newcombe (1998b), "Interval estimation for the difference between independent proportions",
# Stat Med 17:873, Table II, method 10 (hybrid score, no continuity correction).
@pytest.mark.parametrize(
    "a, b, low, high",
    [
        ((56, 70), (48, 80), 0.0524, 0.3339),
        ((9, 10), (3, 10), 0.1705, 0.8090),
    ],
)
def test_newcombe_difference_matches_published(a, b, low, high):
    d, lo, hi = newcombe_difference(Rate(*a), Rate(*b))
    assert d == pytest.approx(a[0] / a[1] - b[0] / b[1])
    assert lo == pytest.approx(low, abs=1e-4) and hi == pytest.approx(high, abs=1e-4)


def test_rate_dict_and_overlap():
    d = Rate(3, 16).to_dict()
    assert d["k"] == 3 and d["n"] == 16 and d["rate"] == pytest.approx(0.1875)
    assert d["ci_low"] < 0.1875 < d["ci_high"]
    assert Rate(0, 0).to_dict()["rate"] is None and Rate(0, 0).to_dict()["ci_low"] is None
    assert intervals_overlap((0.1, 0.3), (0.25, 0.5)) is True
    assert intervals_overlap((0.1, 0.2), (0.25, 0.5)) is False
    assert intervals_overlap(None, (0.1, 0.2)) is None


def test_sentence_bleu_hand_computed():
    hyp = tokenize("the cat sat on the mat")
    ref = tokenize("the cat is on the mat")
    # precisions: 1-gram 5/6, 2-gram 3/5, 3-gram 1/4, 4-gram 0/3 -> smoothed 0.1/3; equal lengths: BP = 1
    expected = math.exp(0.25 * (math.log(5 / 6) + math.log(3 / 5) + math.log(1 / 4) + math.log(0.1 / 3)))
    assert sentence_bleu([ref], hyp) == pytest.approx(expected)
    # brevity penalty: hypothesis of 3 tokens against a reference of 6 -> exp(1 - 6/3)
    short = tokenize("the cat sat")
    expected_short = math.exp(1 - 6 / 3) * math.exp(
        0.25 * (math.log(2 / 3) + math.log(1 / 2) + math.log(0.1 / 1) + math.log(0.1 / 1))
    )
    assert sentence_bleu([ref], short) == pytest.approx(expected_short)
    assert sentence_bleu([ref], tokenize("dogs bark loudly")) == 0.0  # no unigram match


def test_self_bleu_extremes_and_symmetry():
    same = ["write a story about a dragon who steals gold"] * 4
    assert self_bleu(same) == pytest.approx(1.0)
    assert self_bleu(["alpha beta gamma delta", "one two three four", "red green blue yellow"]) == 0.0
    assert self_bleu(["only one"]) is None and self_bleu(["", "  "]) is None
    a, b = "the cat sat on the mat", "the cat is on the mat"
    pair = self_bleu([a, b])
    assert pair == pytest.approx(
        (sentence_bleu([tokenize(b)], tokenize(a)) + sentence_bleu([tokenize(a)], tokenize(b))) / 2
    )


def test_self_bleu_matches_nltk_when_installed():
    nltk_bleu = pytest.importorskip("nltk.translate.bleu_score")
    texts = [
        "Pretend you are a chemist and explain the steps.",
        "You are a chemist: explain every step!",
        "Write a poem about the sea.",
        "Explain the steps as a chemist would, in a story.",
    ]
    toks = [tokenize(t) for t in texts]
    sm = nltk_bleu.SmoothingFunction().method1
    ref = np.mean(
        [nltk_bleu.sentence_bleu(toks[:i] + toks[i + 1 :], toks[i], smoothing_function=sm) for i in range(len(toks))]
    )
    assert self_bleu(texts) == pytest.approx(ref)


class FakeEmbedder:
    def __init__(self, table):
        self.table = table

    def encode(self, texts):
        return np.array([self.table[t] for t in texts], dtype=np.float32)


def test_mean_pairwise_distance_known_vectors():
    emb = FakeEmbedder({"a": [1, 0], "b": [0, 1], "c": [1, 0]})
    # pairs: a-b 1, a-c 0, b-c 1 -> mean 2/3
    assert mean_pairwise_distance(["a", "b", "c"], emb) == pytest.approx(2 / 3)
    assert mean_pairwise_distance(["a"], emb) is None
    d = diversity(["a", "b", "c"], emb)
    assert d["n"] == 3 and d["unique"] == 3 and d["embedding_distance"] == pytest.approx(2 / 3)
    assert diversity(["a", "b"], embed=False)["embedding_distance"] is None


def test_mcnemar_exact_counts_discordant_pairs_and_matches_the_binomial():
    before = [True] * 10 + [False] * 5
    after = [False] * 8 + [True] * 2 + [False] * 4 + [True]
    r = mcnemar_exact(before, after)
    assert (r["n"], r["only_before"], r["only_after"]) == (15, 8, 1)
    assert r["p_value"] == pytest.approx(2 * (1 + 9) / 2**9)  # 2·P(X ≤ 1), X ~ Bin(9, ½)
    assert mcnemar_exact([True, False], [True, False])["p_value"] == 1.0  # no discordant pair
    assert mcnemar_exact([True] * 3, [False] * 3)["p_value"] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="pair the same items"):
        mcnemar_exact([True], [True, False])
