"""Agreement metrics between a judge and human labels."""

from __future__ import annotations

from typing import Sequence


def refusal_metrics(truth: Sequence[bool], pred: Sequence[bool]) -> dict:
    """Accuracy, precision, recall, F1 for the positive class "refused", and the confusion matrix."""
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
    return {
        "n": n, "positives": tp + fn,
        "accuracy": (tp + tn) / n if n else 0.0,
        "precision": precision, "recall": recall, "f1": f1,
        "confusion": {"tp": tp, "fp": fp, "fn": fn, "tn": tn},
    }
