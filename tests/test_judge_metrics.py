"""Agreement metrics (ssp.judges.metrics) against published worked examples."""

from __future__ import annotations

import math

import pytest

from ssp.judges.metrics import agreement, cohen_kappa, refusal_metrics, wilson


def test_wilson_matches_the_textbook_interval() -> None:
    # 8 successes in 10 trials, 95%: (0.490, 0.943) (Wilson 1927; Newcombe 1998, Table I).
    lo, hi = wilson(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    assert all(math.isnan(x) for x in wilson(0, 0))


def test_kappa_matches_the_worked_example() -> None:
    # Wikipedia "Cohen's kappa": 50 items, yes/yes 20, yes/no 5, no/yes 10, no/no 15 -> kappa 0.4.
    a = ["y"] * 20 + ["y"] * 5 + ["n"] * 10 + ["n"] * 15
    b = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    assert cohen_kappa(a, a) == pytest.approx(1.0)


def test_agreement_per_label_and_confusion() -> None:
    truth = ["full", "full", "partial", "none", "none", "none"]
    pred = ["full", "none", "partial", "none", "none", "full"]
    m = agreement(truth, pred)
    assert m["confusion_matrix"]["full"] == {"full": 1, "none": 1, "partial": 0}
    assert m["per_label"]["none"]["precision"] == pytest.approx(2 / 3)
    assert m["per_label"]["none"]["recall"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(4 / 6)
    lo, hi = m["accuracy_ci"]
    assert lo < 4 / 6 < hi


def test_refusal_metrics_confusion_and_kappa() -> None:
    m = refusal_metrics([True, True, False, False], [True, False, False, True])
    assert m["confusion"] == {"tp": 1, "fp": 1, "fn": 1, "tn": 1}
    assert m["kappa"] == pytest.approx(0.0)
    assert m["per_label"]["refused"]["recall"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="2 labels vs 1"):
        refusal_metrics([True, False], [True])
