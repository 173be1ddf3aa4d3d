"""Calibrated confidence and the review threshold of every trained model (torch side).

For each trained row: logits of its best checkpoint on the validation and test images; the
temperature fitted on the **validation** logits alone (exports.calibration.fit_temperature);
ECE (15 equal-width bins), MCE, NLL and Brier on the test images before and after (ECE/MCE
by torchmetrics); the smallest confidence threshold whose automatic decisions reach
--target-accuracy on validation, and what it gives on test (coverage, accuracy of the auto
decisions, both with Clopper-Pearson intervals; risk-coverage curve and its area). Deployment
variants that passed fidelity are scored the same way, in numpy, on the logits their fidelity
check saved, with the model's temperature (the one their file carries).

`calibrate_into` is what `bench run` calls after training; `calibrate_run` does the same for
an existing run folder (`bench calibrate RUN_DIR`), rebuilding its data from results.json and
split.json.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bench import metrics as M
from bench.release.section import assign
from exports import calibration as C

FIGURE_KEYS = ("ece", "mce", "nll", "brier")


def torch_figures(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> dict:
    """ECE and MCE (torchmetrics, 15 equal-width bins), NLL, Brier, accuracy of logits / T."""
    from torchmetrics.functional.classification import multiclass_calibration_error

    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64) / float(temperature)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    probs = torch.softmax(z, dim=1)
    k = z.shape[1]
    onehot = torch.nn.functional.one_hot(y, k).double()

    def ce(norm: str) -> float:
        return float(multiclass_calibration_error(probs, y, k, n_bins=C.N_BINS, norm=norm))

    conf, pred = probs.max(dim=1)
    return {
        "ece": ce("l1"),
        "mce": ce("max"),
        "nll": float(torch.nn.functional.cross_entropy(z, y)),
        "brier": float(((probs - onehot) ** 2).sum(dim=1).mean()),
        "accuracy": float((pred == y).double().mean()),
        "mean_confidence": float(conf.mean()),
        "images": int(len(y)),
    }


def _share(k: int, n: int) -> dict:
    lo, hi = M.clopper_pearson(k, n) if n else (None, None)
    return {"value": k / n if n else None, "count": k, "of": n, "ci95_low": lo, "ci95_high": hi}


def operating_point(
    val_conf, val_correct, eval_conf, eval_correct, target: float, eval_split: str = "test"
) -> dict:
    """The review threshold picked on validation and what it does on the evaluation images."""
    val_conf, eval_conf = np.asarray(val_conf), np.asarray(eval_conf)
    val_correct, eval_correct = np.asarray(val_correct, bool), np.asarray(eval_correct, bool)
    t = C.select_threshold(val_conf, val_correct, target)
    rec = {"target_accuracy": target, "threshold": t, "chosen_on": "validation", "reason": None}
    if t is None:
        rec["reason"] = (
            f"no confidence threshold makes the automatic decisions reach accuracy {target} on "
            f"the {len(val_conf)} validation images (all of them: "
            f"{val_correct.mean() if len(val_conf) else float('nan'):.4f})"
        )
    # Without a threshold every image goes to review (no confidence reaches infinity):
    # coverage 0, and no automatic decision to be right or wrong. The same keys either way:
    # readers of results.json see one schema.
    cut = np.inf if t is None else t
    v_auto, e_auto = val_conf >= cut, eval_conf >= cut
    rec["val_coverage"] = _share(int(v_auto.sum()), len(val_conf))
    rec["val_auto_accuracy"] = _share(int(val_correct[v_auto].sum()), int(v_auto.sum()))
    rec[f"{eval_split}_coverage"] = _share(int(e_auto.sum()), len(eval_conf))
    rec[f"{eval_split}_auto_accuracy"] = _share(int(eval_correct[e_auto].sum()), int(e_auto.sum()))
    rec["evaluated_on"] = eval_split
    return rec


def calibrate_logits(
    val_logits, val_labels, eval_logits, eval_labels, *, target: float, eval_split: str = "test"
) -> dict:
    """Temperature (validation only), before/after figures and the operating point."""
    val_labels, eval_labels = np.asarray(val_labels), np.asarray(eval_labels)
    t = C.fit_temperature(val_logits, val_labels)
    before = torch_figures(eval_logits, eval_labels)
    after = torch_figures(eval_logits, eval_labels, t)
    vp, ep = C.softmax_t(val_logits, t), C.softmax_t(eval_logits, t)
    e_conf, e_ok = ep.max(1), ep.argmax(1) == eval_labels
    rec = {
        "temperature": t,
        # the NLL kept falling up to the edge of the search: the model is no better than
        # uniform (T_MAX) or the validation images are all right and separable (T_MIN)
        "temperature_at_search_bound": not C.T_MIN * 1.001 < t < C.T_MAX * 0.999,
        "fitted_on": "validation",
        "fit_images": int(len(val_labels)),
        "evaluated_on": eval_split,
        "val_nll_before": C.nll(val_logits, val_labels),
        "val_nll_after": C.nll(val_logits, val_labels, t),
        "before": before,
        "after": after,
        "nll_worse_after": after["nll"] > before["nll"],
        "reliability_before": _bins(eval_logits, eval_labels, 1.0),
        "reliability_after": _bins(eval_logits, eval_labels, t),
        "review": operating_point(
            vp.max(1), vp.argmax(1) == val_labels, e_conf, e_ok, target, eval_split
        ),
    }
    rc = C.risk_coverage(e_conf, e_ok)
    rec["aurc"] = rc["aurc"]
    rec["risk_coverage"] = {"coverage": rc["coverage"], "risk": rc["risk"]}
    return rec


def _bins(logits, labels, t: float) -> dict:
    p = C.softmax_t(logits, t)
    b = C.reliability_bins(p.max(1), p.argmax(1) == np.asarray(labels))
    return {k: np.asarray(v).tolist() for k, v in b.items()}


def variant_figures(logits, labels, temperature: float) -> dict:
    """A deployment variant's calibration (numpy only) before and after the model's T."""
    return {
        "before": C.figures(logits, labels),
        "after": C.figures(logits, labels, temperature),
    }


def model_logits(model, ctx, idx) -> np.ndarray:
    """float32 logits of `model` on the images `idx` in FP32, no autocast: the deployed ONNX
    file computes in FP32, so its temperature is fitted on FP32 logits."""
    model = model.to(ctx.device).float().eval()
    out = []
    with torch.no_grad():
        for raw, _ in ctx.batches(idx, ctx.recipe.eval_batch_size):
            out.append(model(ctx.eval_transform(raw).float()).float().cpu())
    if not out:
        return np.zeros((0, len(ctx.classes)), np.float32)
    return torch.cat(out).numpy()


def row_folder(out: Path, row: dict) -> Path:
    return Path(out) / Path(row["checkpoint"]).parent


LOGITS_FILE = "calibration_logits.npz"


def row_logits(row: dict, out: Path, ctx) -> dict:
    """Validation and evaluation logits of a row's best checkpoint, saved beside it (the
    explanations read the same ones); recomputed when the file is missing."""
    from bench.registry import load_checkpoint
    from neu._io import atomic_path

    path = row_folder(out, row) / LOGITS_FILE
    if path.is_file():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    model, _ = load_checkpoint(Path(out) / row["checkpoint"])
    eval_idx = ctx.test_idx if len(ctx.test_idx) else ctx.val_idx
    d = {
        "val_logits": model_logits(model, ctx, ctx.val_idx),
        "val_labels": ctx.labels[ctx.val_idx].cpu().numpy(),
        "eval_logits": model_logits(model, ctx, eval_idx),
        "eval_labels": ctx.labels[eval_idx].cpu().numpy(),
        "eval_index": eval_idx.cpu().numpy(),
    }
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **d)
    return d


def calibrate_into(results: dict, out: Path, contexts: dict, target: float, reporter) -> dict:
    """`bench run` and `bench calibrate`: the calibration step's section
    (calibration_section), assigned into results; returns the section."""
    return assign(results, calibration_section(results, out, contexts, target, reporter))


def calibration_section(results: dict, out: Path, contexts: dict, target: float,
                        reporter) -> dict:  # fmt: skip
    """The calibration step's results.json section; results itself is only read.

    Owns: calibration (one record per trained row, one per judged variant, and the plots:
    reliability diagram per model, risk-coverage curves); its own entries of the plot_errors
    log."""
    from bench.report.calibration import write_plots
    from bench.summary import best_rows

    out = Path(out)
    cal = {"target_accuracy": target, "n_bins": C.N_BINS, "rows": [], "variants": []}
    best = {(r["model"], r["seed"], r.get("fold")) for r in best_rows(results).values()}
    for row in results["rows"]:
        if row["status"] != "ok":
            continue
        ctx = contexts.get(row.get("fold")) or next(iter(contexts.values()))
        try:
            d = row_logits(row, out, ctx)
            split = "test" if len(ctx.test_idx) else "val"
            rec = calibrate_logits(
                d["val_logits"], d["val_labels"], d["eval_logits"], d["eval_labels"],
                target=target, eval_split=split,
            )  # fmt: skip
        except Exception as e:  # calibration must never cost the run its other results
            rec = {"error": f"{type(e).__name__}: {e}"}
            reporter.warn(f"[{row['model']}] calibration failed: {rec['error']}")
        key = {"model": row["model"], "seed": row["seed"], "fold": row.get("fold")}
        cal["rows"].append({**key, "shipped": (*key.values(),) in best, **rec})
        if "error" not in rec:
            reporter.log(_summary_line(row["model"], rec))
    cal["variants"] = _variant_records(results, out, cal["rows"])
    section = {"calibration": cal}
    write_plots(section, out)  # adds calibration.plots, or a plot_errors entry of its own
    return section


def _summary_line(model: str, rec: dict) -> str:
    b, a, r = rec["before"], rec["after"], rec["review"]
    t = r["threshold"]
    cov = r.get(f"{rec['evaluated_on']}_coverage", {}).get("value")
    tail = (
        f"review threshold {t:.4f} -> {rec['evaluated_on']} coverage {cov:.1%}"
        if t is not None
        else f"no review threshold reaches {r['target_accuracy']} on validation"
    )
    return (
        f"[{model}] temperature {rec['temperature']:.3f} (validation); {rec['evaluated_on']} "
        f"ECE {b['ece']:.4f} -> {a['ece']:.4f}, NLL {b['nll']:.4f} -> {a['nll']:.4f}"
        + (" (WORSE after temperature scaling)" if rec["nll_worse_after"] else "")
        + f"; {tail}"
    )


def fidelity_logits_path(out: Path, model: str, variant: str) -> Path:
    return Path(out) / "variants" / model / f"{variant}.fidelity_logits.npy"


def _variant_records(results: dict, out: Path, rows: list[dict]) -> list[dict]:
    """Variants that passed fidelity on the test images, scored on the logits they produced
    there, with the temperature of their model's shipped row."""
    temps = {r["model"]: r for r in rows if r.get("shipped") and "temperature" in r}
    recs = []
    for dep in results.get("deployment") or []:
        model, variant = dep["model"], dep["variant"]
        path = fidelity_logits_path(out, model, variant)
        shipped = temps.get(model)
        if not (dep.get("passed") and shipped and path.is_file()):
            continue
        logits = np.load(path)
        labels = row_logits_labels(out, results, model)
        if labels is None or len(labels) != len(logits):
            continue
        recs.append(
            {"model": model, "variant": variant, "precision": dep.get("precision"),
             "temperature": shipped["temperature"],
             **variant_figures(logits, labels, shipped["temperature"])}
        )  # fmt: skip
    return recs


def row_logits_labels(out: Path, results: dict, model: str):
    from bench.summary import best_rows

    row = best_rows(results).get(model)
    path = row_folder(out, row) / LOGITS_FILE if row else None
    if not (path and path.is_file()):
        return None
    with np.load(path) as z:
        return z["eval_labels"]
