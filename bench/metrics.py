"""Classification metrics and honest intervals, in plain numpy and math (no scipy needed).

With 360 validation images a single accuracy is a binomial estimate: 99.4% vs 99.7% is one
image. So every accuracy carries an interval: Clopper-Pearson (exact binomial) for one seed,
Student-t over seeds for several.
"""

from __future__ import annotations

import math

import numpy as np


def confusion_matrix(labels, preds, num_classes: int) -> np.ndarray:
    """Rows: true class, columns: predicted class."""
    labels = np.asarray(labels, dtype=np.int64)
    preds = np.asarray(preds, dtype=np.int64)
    cm = np.bincount(labels * num_classes + preds, minlength=num_classes * num_classes)
    return cm.reshape(num_classes, num_classes)


def classification_report(cm: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, per-class precision/recall/F1/support and macro-F1 from a confusion matrix.

    A class never predicted has precision 0 (not NaN): it is a failure to report, not to hide.
    """
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    present = support > 0
    total = cm.sum()
    return {
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": [
            {
                "class": c,
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, c in enumerate(classes)
        ],
    }


def _binom_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), summed in log space (exact enough for n <= 1e5)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    lp, lq = math.log(p), math.log1p(-p)
    logs = [
        math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq
        for i in range(k + 1)
    ]
    m = max(logs)
    return min(1.0, math.exp(m) * sum(math.exp(v - m) for v in logs))


def _bisect(f, lo: float, hi: float, iters: int = 100) -> float:
    # f is monotone decreasing from positive to negative on [lo, hi].
    for _ in range(iters):
        mid = (lo + hi) / 2
        if f(mid) > 0:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def clopper_pearson(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) binomial interval for successes/n."""
    if n <= 0:
        return (0.0, 1.0)
    alpha = 1 - confidence
    k = successes
    # lower: P(X >= k; p) = alpha/2  <=>  1 - cdf(k-1; p) = alpha/2
    lower = 0.0 if k == 0 else _bisect(lambda p: alpha / 2 - (1 - _binom_cdf(k - 1, n, p)), 0, 1)
    # upper: P(X <= k; p) = alpha/2
    upper = 1.0 if k == n else _bisect(lambda p: _binom_cdf(k, n, p) - alpha / 2, 0, 1)
    return (lower, upper)


# Two-sided 97.5% quantiles of Student's t for df = 1..30; beyond, the normal's 1.96 is within 1.5%.
_T975 = [
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
]  # fmt: skip


def mean_ci(values: list[float]) -> dict:
    """Mean, sample std and the 95% Student-t interval of the mean over seeds."""
    v = np.asarray(values, dtype=np.float64)
    n = len(v)
    mean = float(v.mean()) if n else float("nan")
    if n < 2:
        return {"mean": mean, "std": 0.0 if n else float("nan"), "ci95": None, "n": n}
    std = float(v.std(ddof=1))
    t = _T975[n - 2] if n - 1 <= len(_T975) else 1.96
    half = t * std / math.sqrt(n)
    return {"mean": mean, "std": std, "ci95": [mean - half, mean + half], "n": n}


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value for paired predictions on the same images.

    Only discordant images carry information: under "both models are equally accurate" each
    of the a_only + b_only images is equally likely to favour either, so the count favouring A
    is Binomial(a_only + b_only, 1/2); the p-value doubles the smaller tail (capped at 1).
    """
    n = a_only + b_only
    if n == 0:
        return 1.0
    return min(1.0, 2.0 * _binom_cdf(min(a_only, b_only), n, 0.5))
