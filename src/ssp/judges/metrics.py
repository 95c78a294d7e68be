"""Agreement metrics between a judge and human labels (or another judge).

Intervals are Wilson score intervals (scipy's `binomtest(...).proportion_ci(method="wilson")`), so a
figure on 76 refusals says how far it can be trusted; κ is Cohen's kappa (agreement beyond chance,
which matters when one class dominates, as refusals do in the Llama-2 XSTest file).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import Any

from scipy.stats import binomtest


def wilson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials; (nan, nan) when n = 0."""
    if n == 0:
        return (math.nan, math.nan)
    ci = binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    return (float(ci.low), float(ci.high))


def cohen_kappa(truth: Sequence[Hashable], pred: Sequence[Hashable]) -> float:
    """Cohen's κ = (p_o − p_e) / (1 − p_e); 1.0 when both raters use one identical label only."""
    n = len(truth)
    if n == 0:
        return math.nan
    labels = set(truth) | set(pred)
    p_o = sum(t == p for t, p in zip(truth, pred)) / n
    p_e = sum((sum(t == lab for t in truth) / n) * (sum(p == lab for p in pred) / n) for lab in labels)
    return 1.0 if p_e == 1.0 else (p_o - p_e) / (1.0 - p_e)


def agreement(truth: Sequence[Hashable], pred: Sequence[Hashable]) -> dict[str, Any]:
    """Accuracy (Wilson CI), κ, the confusion matrix and precision/recall/F1 (Wilson CIs) per label."""
    if len(truth) != len(pred):
        raise ValueError(f"agreement: {len(truth)} labels vs {len(pred)} predictions")
    n = len(truth)
    labels = sorted(set(truth) | set(pred), key=str)
    confusion = {
        str(t): {str(p): sum(1 for a, b in zip(truth, pred) if a == t and b == p) for p in labels} for t in labels
    }
    correct = sum(t == p for t, p in zip(truth, pred))
    per_label: dict[str, Any] = {}
    for lab in labels:
        tp = confusion[str(lab)][str(lab)]
        predicted = sum(confusion[str(t)][str(lab)] for t in labels)
        actual = sum(confusion[str(lab)].values())
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_label[str(lab)] = {
            "support": actual,
            "predicted": predicted,
            "precision": precision,
            "precision_ci": wilson(tp, predicted),
            "recall": recall,
            "recall_ci": wilson(tp, actual),
            "f1": f1,
        }
    return {
        "n": n,
        "accuracy": correct / n if n else 0.0,
        "accuracy_ci": wilson(correct, n),
        "kappa": cohen_kappa(truth, pred),
        "labels": [str(x) for x in labels],
        "confusion_matrix": confusion,
        "per_label": per_label,
    }


def refusal_metrics(
    truth: Sequence[bool], pred: Sequence[bool], names: tuple[str, str] = ("refused", "answered")
) -> dict[str, Any]:
    """Accuracy, precision, recall, F1 for the positive class (`names[0]`, default "refused"), the
    2×2 confusion, and `agreement`'s intervals, κ, confusion matrix and per-label figures."""
    if len(truth) != len(pred):
        raise ValueError(f"refusal_metrics: {len(truth)} labels vs {len(pred)} predictions")
    tp = sum(1 for t, p in zip(truth, pred) if t and p)
    fp = sum(1 for t, p in zip(truth, pred) if not t and p)
    fn = sum(1 for t, p in zip(truth, pred) if t and not p)
    tn = sum(1 for t, p in zip(truth, pred) if not t and not p)
    n = tp + fp + fn + tn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    label = {True: names[0], False: names[1]}
    full = agreement([label[bool(t)] for t in truth], [label[bool(p)] for p in pred])
    return {
        "n": n,
        "positives": tp + fn,
        "accuracy": (tp + tn) / n if n else 0.0,
        "accuracy_ci": full["accuracy_ci"],
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "kappa": full["kappa"],
        "confusion": {"tp": tp, "fp": fp, "fn": fn, "tn": tn},
        "confusion_matrix": full["confusion_matrix"],
        "per_label": full["per_label"],
    }
