"""The run's summary, computed once from its rows and each run's metrics.json: per-model
headline accuracy with its interval, the per-seed evaluations (confusion matrix, per-class
scores, misclassified files) and the paired McNemar comparisons between models.

`bench run` calls `summarize` once, when training has ended; every later step and every view
(bench.report) reads the result from results.json instead of computing it again.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bench import metrics as M


def summarize(out: Path, results: dict) -> dict:
    """results.json's `summary`, `evaluation` and `comparisons` (new keys, nothing mutated)."""
    summary = summarize_models(results["rows"])
    evaluation, predictions = evaluations(Path(out), results)
    comparisons = paired_comparisons(predictions)
    mark_best(summary, comparisons)
    return {"summary": summary, "evaluation": evaluation, "comparisons": comparisons}


OPTIMISTIC = "validation accuracy (also used to pick the checkpoint: optimistic)"


def headline_split(rows: list[dict]) -> str:
    """ "test" when the rows were scored on a test split, else "val" (--test-fraction 0)."""
    ok = [r for r in rows if r["status"] == "ok"]
    return "test" if all(r.get("accuracy_split") == "test" for r in ok) else "val"


def summarize_models(rows: list[dict]) -> list[dict]:
    """One entry per model over its seeds and folds: the headline accuracy and its interval.

    Headline = the test images (val when there is no test split; then labelled optimistic).
    Folds are pooled: every image of the dataset is a test image once per seed, so one seed's
    accuracy is correct/images over all folds, with its Clopper-Pearson interval; the per-fold
    mean and std show fold-to-fold variation. Several seeds: mean, std and Student-t interval
    of the per-seed (pooled) accuracies.
    """
    split = headline_split(rows)
    out = []
    for name in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == name]
        ok = [r for r in mine if r["status"] == "ok"]
        folds = sorted({r.get("fold") for r in mine if r.get("fold") is not None})
        entry = _unscored_entry(name, mine, ok, folds, split)
        if ok:
            entry.update(_scores(ok, folds, split))
        out.append(entry)
    return out


def _unscored_entry(name: str, mine: list[dict], ok: list[dict], folds: list, split: str) -> dict:
    """A model's entry with every score None: what a model whose runs all failed keeps."""
    return {
        "model": name,
        "runs": len(mine),
        "seeds": len({r["seed"] for r in mine}),
        "folds": len(folds) or None,
        "failed": len(mine) - len(ok),
        "weights": mine[0].get("weights"),
        "amp": mine[0].get("amp"),
        "accuracy_split": split,
        "accuracy_label": "test accuracy" if split == "test" else OPTIMISTIC,
        "accuracy_mean": None,
        "accuracy_std": None,
        "accuracy_ci95": None,
        "ci_method": None,
        "correct": None,
        "images": None,
        "fold_accuracy_mean": None,
        "fold_accuracy_std": None,
        "macro_f1_mean": None,
        "val_accuracy_mean": None,
        "train_seconds_mean": None,
        "params_m": mine[0].get("params_m"),
        "gflops": mine[0].get("gflops"),
    }


def _scores(ok: list[dict], folds: list, split: str) -> dict:
    """The headline accuracy of a model's successful runs, its interval, and the means."""
    by_seed: dict[int, list[dict]] = {}
    for r in ok:
        by_seed.setdefault(r["seed"], []).append(r)
    correct = sum(r[f"{split}_correct"] for r in ok)
    images = sum(r[f"{split}_images"] for r in ok)
    per_seed = [
        sum(r[f"{split}_correct"] for r in rs) / sum(r[f"{split}_images"] for r in rs)
        for rs in by_seed.values()
    ]
    stats = M.mean_ci(per_seed)
    pooled = f", {len(folds)} folds pooled" if folds else ""
    # One seed has no spread to build a t interval from; its pooled count is binomial.
    if len(by_seed) == 1:
        ci = list(M.clopper_pearson(correct, images))
        method = f"Clopper-Pearson 95% (n={images} {split} images{pooled})"
    else:
        ci = stats["ci95"]
        method = f"Student-t 95% over {len(by_seed)} seeds{pooled}"
    scores = {}
    if folds:
        fold_stats = M.mean_ci([r[f"{split}_accuracy"] for r in ok])
        scores.update(fold_accuracy_mean=fold_stats["mean"], fold_accuracy_std=fold_stats["std"])

    def mean(key: str) -> float:
        return sum(r[key] for r in ok) / len(ok)

    scores.update(
        accuracy_mean=stats["mean"],
        accuracy_std=stats["std"],
        accuracy_ci95=ci,
        ci_method=method,
        correct=correct,
        images=images,
        macro_f1_mean=mean(f"{split}_macro_f1"),
        val_accuracy_mean=mean("val_accuracy"),
        train_seconds_mean=mean("train_seconds"),
        pipeline_efficiency_mean=mean("pipeline_efficiency"),
        train_img_s_mean=mean("train_img_s"),
    )
    return scores


ALPHA = 0.05


def paired_comparisons(predictions: dict[str, dict[tuple, bool]]) -> list[dict]:
    """Exact McNemar test for every pair of models on the images both predicted.

    predictions: model -> {(seed, fold, file): correct}. Pairs are matched on the same seed,
    fold and file (the same test image under the same split), pooled over seeds and folds.
    """
    names = list(predictions)
    out = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            common = predictions[a].keys() & predictions[b].keys()
            a_only = sum(predictions[a][k] and not predictions[b][k] for k in common)
            b_only = sum(predictions[b][k] and not predictions[a][k] for k in common)
            out.append(
                {
                    "model_a": a,
                    "model_b": b,
                    "images": len(common),
                    "a_only_correct": a_only,
                    "b_only_correct": b_only,
                    "p_value": M.mcnemar_exact(a_only, b_only),
                }
            )
    return out


def mark_best(summary: list[dict], comparisons: list[dict]) -> None:
    """Per summary entry: the McNemar p-value against the most accurate model, and whether
    the two are statistically indistinguishable (p >= 0.05): a tie, not a ranking."""
    scored = [s for s in summary if s["accuracy_mean"] is not None]
    if not scored:
        return
    best = max(scored, key=lambda s: s["accuracy_mean"])["model"]
    pair = {frozenset((c["model_a"], c["model_b"])): c for c in comparisons}
    for s in summary:
        c = pair.get(frozenset((s["model"], best)))
        s["best"] = s["model"] == best
        s["p_value_vs_best"] = None if c is None else c["p_value"]
        s["indistinguishable_from_best"] = (
            True if s["model"] == best else (None if c is None else c["p_value"] >= ALPHA)
        )


MISCLASSIFIED_SHOWN = 20


def evaluations(out: Path, results: dict) -> tuple[dict, dict]:
    """Per model and seed (folds pooled): confusion matrix, per-class scores, misclassified
    files; and per model every prediction, keyed (seed, fold, file) for the paired tests."""
    classes = results["dataset"]["classes"]
    pooled: dict[tuple, dict] = {}
    predictions: dict[str, dict[tuple, bool]] = {}
    for r in results["rows"]:
        if r["status"] != "ok":
            continue
        path = out / Path(r["checkpoint"]).parent / "metrics.json"
        if not path.exists():
            continue
        m = json.loads(path.read_text())
        fold = r.get("fold")
        p = m.get("predictions")
        if p:
            mine = predictions.setdefault(r["model"], {})
            for f, y, yhat in zip(p["files"], p["labels"], p["predicted"], strict=True):
                mine[r["seed"], fold, f] = y == yhat
        ev = pooled.setdefault(
            (r["model"], r["seed"]), {"cm": None, "misclassified": [], "files": []}
        )
        cm = np.asarray(m["confusion_matrix"])
        ev["cm"] = cm if ev["cm"] is None else ev["cm"] + cm
        ev["misclassified"] += [
            {**x, "fold": fold} if fold is not None else x for x in m["misclassified"]
        ]
        ev["files"].append(str(path.relative_to(out)))
    evals = {}
    for (model, seed), ev in pooled.items():
        rep = M.classification_report(ev["cm"], list(classes))
        evals[f"{model} seed {seed}"] = {
            "evaluated_on": headline_split(results["rows"]),
            "confusion_matrix": ev["cm"].tolist(),
            "per_class": rep["per_class"],
            "misclassified_count": len(ev["misclassified"]),
            "misclassified": ev["misclassified"][:MISCLASSIFIED_SHOWN],
            "metrics_file": ", ".join(ev["files"]),
        }
    return evals, predictions


def best_rows(results: dict) -> dict[str, dict]:
    """Per model, the ok row (seed, fold) whose checkpoint we ship: picked on validation
    accuracy then loss, like the epoch, so the test figures stay out of the choice."""
    best: dict[str, dict] = {}
    for row in results.get("rows", []):
        if row["status"] != "ok":
            continue
        cur = best.get(row["model"])
        if cur is None or (row["val_accuracy"], -row["val_loss"]) > (
            cur["val_accuracy"],
            -cur["val_loss"],
        ):
            best[row["model"]] = row
    return best
