"""Calibrated confidence and the auto/review decision, in numpy only (no torch).

The deployment runtime (exports.runtime) divides the logits by the temperature stored in the
file and compares the top-1 probability with the stored review threshold; the harness
(bench.release.calibrate) fits both on the validation images and measures them on the test images.
The numpy metrics here are the torch-free twins of the torchmetrics ones bench uses (same
15 equal-width bins, same bucketing), so ONNX Runtime logits of a deployment variant are
scored exactly as torch logits are.
"""

from __future__ import annotations

import math

import numpy as np

N_BINS = 15
# Temperatures searched by fit_temperature: wide enough for any sane network (a net that
# needs T outside this range is broken, not miscalibrated).
T_MIN, T_MAX = 0.05, 20.0


def softmax_t(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of logits / temperature in float64 (stable: row max subtracted)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood (cross-entropy, nats) of the true class."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    m = z.max(axis=1, keepdims=True)
    lse = (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))[:, 0]
    labels = np.asarray(labels, dtype=np.int64)
    return float(np.mean(lse - z[np.arange(len(labels)), labels]))


def brier(probs: np.ndarray, labels: np.ndarray) -> float:
    """Multiclass Brier score: mean over images of sum_k (p_k - [k == y])^2 (0 best, 2 worst)."""
    probs = np.asarray(probs, dtype=np.float64)
    onehot = np.zeros_like(probs)
    onehot[np.arange(len(probs)), np.asarray(labels, dtype=np.int64)] = 1.0
    return float(np.mean(np.sum((probs - onehot) ** 2, axis=1)))


def reliability_bins(conf: np.ndarray, correct: np.ndarray, n_bins: int = N_BINS) -> dict:
    """Per equal-width confidence bin: images, mean confidence, accuracy.

    Bucketing as torchmetrics does it (boundaries linspace(0, 1, n_bins + 1), a confidence
    lands in the bin whose left edge is the last boundary <= it; exactly 1.0 gets a bin of its
    own, which only ever merges with the top bin in the plot).
    """
    conf = np.asarray(conf, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.searchsorted(edges, conf, side="right") - 1
    count = np.bincount(idx, minlength=n_bins + 1).astype(np.float64)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins + 1)
    acc_sum = np.bincount(idx, weights=correct, minlength=n_bins + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(count > 0, conf_sum / count, 0.0)
        acc = np.where(count > 0, acc_sum / count, 0.0)
    return {"edges": edges, "count": count, "confidence": mean_conf, "accuracy": acc}


def ece_mce(conf: np.ndarray, correct: np.ndarray, n_bins: int = N_BINS) -> tuple[float, float]:
    """(expected, maximum) calibration error of top-1 confidences over equal-width bins."""
    b = reliability_bins(conf, correct, n_bins)
    gap = np.abs(b["accuracy"] - b["confidence"])
    total = b["count"].sum()
    if total == 0:
        return 0.0, 0.0
    return float(np.sum(gap * b["count"] / total)), float(gap.max())


def figures(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> dict:
    """ECE, MCE, NLL, Brier, accuracy and mean confidence of logits / temperature."""
    probs = softmax_t(logits, temperature)
    labels = np.asarray(labels, dtype=np.int64)
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    ece, mce = ece_mce(conf, correct)
    return {
        "ece": ece,
        "mce": mce,
        "nll": nll(logits, labels, temperature),
        "brier": brier(probs, labels),
        "accuracy": float(correct.mean()) if len(labels) else None,
        "mean_confidence": float(conf.mean()) if len(labels) else None,
        "images": int(len(labels)),
    }


def fit_temperature(logits: np.ndarray, labels: np.ndarray, *, tol: float = 1e-6) -> float:
    """The temperature T minimising the NLL of softmax(logits / T) on these (validation) images.

    NLL is convex in 1/T, hence unimodal in log T: a golden-section search over
    [T_MIN, T_MAX] in log space finds the minimum deterministically (no optimiser state, no
    learning rate to tune, the same answer on every machine).
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        raise ValueError("fit_temperature needs at least one image")
    lo, hi = math.log(T_MIN), math.log(T_MAX)
    g = (math.sqrt(5) - 1) / 2

    def f(u: float) -> float:
        return nll(logits, labels, math.exp(u))

    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = f(a), f(b)
    while hi - lo > tol:
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = f(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = f(b)
    return float(math.exp((lo + hi) / 2))


def select_threshold(conf: np.ndarray, correct: np.ndarray, target: float) -> float | None:
    """The smallest confidence threshold t such that the images with confidence >= t (the ones
    decided automatically) are correct at a rate >= target; None when no t reaches it.

    Candidates are the observed confidences: between two of them every threshold selects the
    same images, and the observed value is the smallest threshold of that set.
    """
    conf = np.asarray(conf, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    if len(conf) == 0:
        return None
    order = np.argsort(-conf, kind="stable")
    c, ok = conf[order], correct[order].astype(np.float64)
    hits = np.cumsum(ok)
    n = np.arange(1, len(c) + 1)
    # Only the last index of each run of equal confidences is a real cut (ties go together).
    last = np.r_[c[1:] != c[:-1], True]
    reach = last & (hits / n >= target)
    if not reach.any():
        return None
    return float(c[np.flatnonzero(reach)[-1]])


def risk_coverage(conf: np.ndarray, correct: np.ndarray) -> dict:
    """Risk (error rate of the decided images) vs coverage (their share), most confident
    first; `aurc` is the area under it (mean risk over the n cut-offs; lower is better)."""
    conf = np.asarray(conf, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    order = np.argsort(-conf, kind="stable")
    errors = np.cumsum(~correct[order])
    n = np.arange(1, len(conf) + 1)
    risk = errors / n
    return {
        "coverage": (n / max(len(conf), 1)).tolist(),
        "risk": risk.tolist(),
        "aurc": float(risk.mean()) if len(conf) else None,
    }


def decide(confidence: float, threshold: float | None) -> str:
    """'auto' when a threshold exists and the calibrated confidence reaches it, else 'review'."""
    return "auto" if threshold is not None and confidence >= threshold else "review"
