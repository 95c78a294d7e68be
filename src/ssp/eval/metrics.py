"""Rates with Wilson 95% intervals, interval comparisons, and diversity of generated attacks.

Definitions (documented in docs/evaluation.md; the tests check them on published values)
-----------------------------------------------------------------------------------------
* Wilson score interval (Wilson 1927) for k successes in n trials, 95%, from scipy
  (`binomtest(k, n).proportion_ci(method="wilson")`, no continuity correction):
      centre = (p + z²/2n) / (1 + z²/n),  half = z·sqrt(p(1−p)/n + z²/4n²) / (1 + z²/n),  z = 1.959964
  k = 0 gives lower 0 exactly, k = n upper 1 exactly. n = 0: no interval.
* Difference of two independent proportions p1 − p2: Newcombe's hybrid score interval (1998,
  method 10) from the two Wilson intervals (l_i, u_i):
      lower = d − sqrt((p1 − l1)² + (u2 − p2)²),  upper = d + sqrt((u1 − p1)² + (p2 − l2)²)
* Self-BLEU (Zhu et al. 2018, Texygen): mean over texts of BLEU-4 of that text against all the
  others as references; uniform weights over 1–4-grams, brevity penalty against the closest
  reference length, "method 1" smoothing (a zero n-gram precision counts as 0.1 / hypothesis n-grams),
  0 when no unigram matches — the same numbers as NLTK's `sentence_bleu` with `SmoothingFunction().method1`.
  Tokens: lower-cased words and single punctuation marks. Higher = less diverse.
* Mean pairwise embedding distance: mean over pairs i < j of 1 − cos(e_i, e_j) with unit sentence
  embeddings (all-MiniLM-L6-v2 by default). Higher = more diverse.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from scipy.stats import binomtest


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float] | None:
    """Wilson score interval of k successes in n trials; None for n = 0."""
    if n <= 0:
        return None
    if not 0 <= k <= n:
        raise ValueError(f"wilson_interval: need 0 ≤ k ≤ n, got k={k}, n={n}")
    ci = binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def wilson_bounds(values: Sequence[float]) -> tuple[float, float]:
    """Wilson bounds of 0/1 scores (≥ 0.5 counts as a success, NaN = no judgment is left out); NaNs when empty."""
    vals = [v for v in values if not math.isnan(v)]
    ci = wilson_interval(sum(1 for v in vals if v >= 0.5), len(vals))
    return ci if ci else (math.nan, math.nan)


@dataclass(frozen=True)
class Rate:
    k: int
    n: int

    @property
    def rate(self) -> float | None:
        return self.k / self.n if self.n else None

    @property
    def ci(self) -> tuple[float, float] | None:
        return wilson_interval(self.k, self.n)

    def to_dict(self) -> dict[str, Any]:
        ci = self.ci
        return {
            "k": self.k,
            "n": self.n,
            "rate": self.rate,
            "ci_low": ci[0] if ci else None,
            "ci_high": ci[1] if ci else None,
        }


def rate_from_dict(d: dict[str, Any] | None) -> Rate | None:
    if not d:
        return None
    return Rate(int(d["k"]), int(d["n"]))


def intervals_overlap(a: tuple[float, float] | None, b: tuple[float, float] | None) -> bool | None:
    if a is None or b is None:
        return None
    return a[0] <= b[1] and b[0] <= a[1]


def newcombe_difference(a: Rate, b: Rate) -> tuple[float, float, float] | None:
    """(a − b, lower, upper): Newcombe's hybrid score 95% interval for a difference of independent proportions."""
    if not a.n or not b.n:
        return None
    p1, p2 = a.k / a.n, b.k / b.n
    l1, u1 = wilson_interval(a.k, a.n)  # type: ignore[misc]
    l2, u2 = wilson_interval(b.k, b.n)  # type: ignore[misc]
    d = p1 - p2
    return d, d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


def mcnemar_exact(before: Sequence[bool], after: Sequence[bool]) -> dict[str, Any]:
    """Paired test of two rates measured on the same items (e.g. ASR before and after training).

    Only discordant items carry information: b = true before and false after, c = false before and
    true after. Two-sided exact p-value = P(min(b, c) or fewer of b + c fair coin flips, either side),
    i.e. scipy's two-sided binomial test of b in b + c trials at p = ½.
    """
    if len(before) != len(after):
        raise ValueError(f"mcnemar_exact: {len(before)} items before, {len(after)} after; pair the same items")
    b = sum(1 for x, y in zip(before, after) if x and not y)
    c = sum(1 for x, y in zip(before, after) if y and not x)
    p = 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5).pvalue)
    return {"n": len(before), "only_before": b, "only_after": c, "p_value": p}


# ----------------------------------------------------------------------------------------- self-BLEU

_TOKEN = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def sentence_bleu(
    references: Sequence[Sequence[str]], hypothesis: Sequence[str], max_n: int = 4, epsilon: float = 0.1
) -> float:
    """BLEU of one tokenised hypothesis against tokenised references (NLTK method-1 smoothing)."""
    if not references:
        raise ValueError("sentence_bleu: no references")
    ref_counts = [[_ngrams(r, n) for n in range(1, max_n + 1)] for r in references]
    return _bleu(ref_counts, [len(r) for r in references], hypothesis, max_n, epsilon)


def _bleu(
    ref_counts: list[list[Counter]], ref_lens: list[int], hyp: Sequence[str], max_n: int, epsilon: float
) -> float:
    numerators, denominators = [], []
    for n in range(1, max_n + 1):
        counts = _ngrams(hyp, n)
        max_ref: Counter = Counter()
        for rc in ref_counts:
            for gram, c in rc[n - 1].items():
                if gram in counts and c > max_ref[gram]:
                    max_ref[gram] = c
        clipped = sum(min(c, max_ref[g]) for g, c in counts.items())
        numerators.append(clipped)
        denominators.append(max(1, sum(counts.values())))
    if numerators[0] == 0:
        return 0.0
    hyp_len = len(hyp)
    ref_len = min(ref_lens, key=lambda r: (abs(r - hyp_len), r))
    if hyp_len > ref_len:
        bp = 1.0
    elif hyp_len == 0:
        bp = 0.0
    else:
        bp = math.exp(1 - ref_len / hyp_len)
    w = 1.0 / max_n
    s = 0.0
    for num, den in zip(numerators, denominators):
        p = (num + epsilon) / den if num == 0 else num / den
        s += w * math.log(p)
    return bp * math.exp(s)


def self_bleu(texts: Sequence[str], max_texts: int = 200, seed: int = 0, max_n: int = 4) -> float | None:
    """Mean BLEU-4 of each text against all the others (None for fewer than two non-empty texts).

    More than `max_texts` texts: a seeded random sample of that many is scored (the cost is quadratic).
    """
    toks = [tokenize(t) for t in texts if t and t.strip()]
    toks = [t for t in toks if t]
    if len(toks) < 2:
        return None
    if len(toks) > max_texts:
        toks = random.Random(seed).sample(toks, max_texts)
    counts = [[_ngrams(t, n) for n in range(1, max_n + 1)] for t in toks]
    lens = [len(t) for t in toks]
    scores = []
    for i, hyp in enumerate(toks):
        refs = counts[:i] + counts[i + 1 :]
        scores.append(_bleu(refs, lens[:i] + lens[i + 1 :], hyp, max_n, 0.1))
    return sum(scores) / len(scores)


def mean_pairwise_distance(
    texts: Sequence[str], embedder: Any = None, max_texts: int = 500, seed: int = 0
) -> float | None:
    """Mean 1 − cosine over all pairs of non-empty texts (None for fewer than two)."""
    import numpy as np

    texts = [t for t in texts if t and t.strip()]
    if len(texts) < 2:
        return None
    if len(texts) > max_texts:
        texts = random.Random(seed).sample(list(texts), max_texts)
    if embedder is None:
        from ssp.judges.embedder import TextEmbedder

        embedder = TextEmbedder.shared()
    vecs = np.asarray(embedder.encode(list(texts)), dtype=np.float64)
    norms = np.linalg.norm(vecs, axis=1, keepdims=True)
    vecs = vecs / np.where(norms > 0, norms, 1.0)
    sims = vecs @ vecs.T
    n = len(texts)
    iu = np.triu_indices(n, k=1)
    return float(np.mean(1.0 - sims[iu]))


def diversity(texts: Sequence[str], embedder: Any = None, embed: bool = True) -> dict[str, Any]:
    """Diversity statistics of a set of attack prompts (duplicates included, as generated)."""
    texts = [t for t in texts if t and t.strip()]
    out: dict[str, Any] = {
        "n": len(texts),
        "unique": len(set(texts)),
        "self_bleu": self_bleu(texts),
        "embedding_distance": None,
    }
    if embed:
        try:
            out["embedding_distance"] = mean_pairwise_distance(texts, embedder)
        except Exception as e:  # noqa: BLE001 - an embedder problem must not lose the evaluation
            out["embedding_error"] = f"{type(e).__name__}: {e}"
    return out
