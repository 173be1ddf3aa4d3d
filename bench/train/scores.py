"""A finished run's figures: what its logits score on a split, and its result row."""

from __future__ import annotations

import numpy as np
import torch

from bench import metrics as M
from bench.train.timing import steady_pipeline, steady_train_img_s


def accuracy(logits: np.ndarray, data, idx: torch.Tensor) -> float:
    return float((logits.argmax(1) == data.labels[idx].cpu().numpy()).mean())


def score(data, idx: torch.Tensor, logits: np.ndarray) -> dict:
    """What `logits` (N, classes) score on the images `idx` of `data` (a FoldData): the row's
    figures (accuracy, correct, images, Clopper-Pearson interval, macro-F1) and the details
    metrics.json keeps (confusion matrix, per-class scores, misclassified files, every
    prediction for paired tests)."""
    labels = data.labels[idx].cpu().numpy()
    preds = logits.argmax(1)
    cm = M.confusion_matrix(labels, preds, len(data.classes))
    report = M.classification_report(cm, data.classes)
    correct = int((preds == labels).sum())
    files = [data.dataset.files[i] for i in idx.cpu().numpy()]
    lo, hi = M.clopper_pearson(correct, len(labels))
    return {
        "row": {
            "accuracy": report["accuracy"],
            "correct": correct,
            "images": len(labels),
            "accuracy_ci95_low": lo,
            "accuracy_ci95_high": hi,
            "macro_f1": report["macro_f1"],
        },
        "details": {
            "confusion_matrix": cm.tolist(),
            "per_class": report["per_class"],
            "misclassified": _misclassified(logits, labels, files, data.classes),
            "predictions": {
                "files": files,
                "labels": labels.tolist(),
                "predicted": preds.tolist(),
            },
        },
    }


def _misclassified(logits: np.ndarray, labels: np.ndarray, files: list, classes: list) -> list:
    preds = logits.argmax(1)
    probs = torch.softmax(torch.from_numpy(logits), 1).numpy()
    return [
        {
            "file": files[i],
            "true": classes[labels[i]],
            "predicted": classes[preds[i]],
            "confidence": float(probs[i, preds[i]]),
        }
        for i in np.flatnonzero(preds != labels)
    ]


def result_row(
    name, seed, data, weights, *, history, best_epoch, val, val_loss, test, params_m
) -> dict:
    """The run's row in results.json: `val` and `test` are `score`s of the best checkpoint
    (test None without a test split: then the headline is the validation split's)."""
    train_img_s, includes_first = steady_train_img_s(history)
    lr, head_lr = data.recipe.effective_lr(weights)
    return {
        "model": name,
        "seed": seed,
        "status": "ok",
        "error": None,
        "weights": weights,
        "amp": data.precision.name,
        "amp_reason": data.precision.reason,
        "lr": lr,
        "head_lr": head_lr,
        "epochs": len(history),
        "best_epoch": best_epoch,
        # the split every headline figure (summary, report, exports) comes from
        "accuracy_split": "test" if test else "val",
        # scored under this autocast precision; the exported file states its own (fp32) figure
        "test_accuracy_precision": data.precision.name,
        **{f"val_{k}": v for k, v in val["row"].items()},
        **{f"test_{k}": (test["row"][k] if test else None) for k in val["row"]},
        "val_loss": val_loss,
        # Training loops only; evaluation (per-epoch validation + the final one) apart.
        "train_seconds": sum(h["train_seconds"] for h in history),
        "eval_seconds": sum(h.get("eval_seconds", 0.0) for h in history),
        "train_img_s": train_img_s,
        "train_img_s_includes_first_epoch": includes_first,
        **steady_pipeline(history),
        "params_m": params_m,
    }
