"""Views of results.json `calibration` and `explanations`: the reliability diagrams, the
risk-coverage plot and the report's sections. Nothing here computes a figure."""

from __future__ import annotations

from pathlib import Path

from bench.report.plots import _figure, _save
from bench.report.tables import md_table


def shipped_record(results: dict, model: str) -> dict | None:
    """The calibration record of the row whose checkpoint a model's export ships."""
    for r in (results.get("calibration") or {}).get("rows", []):
        if r["model"] == model and r.get("shipped") and "error" not in r:
            return r
    return None


def plot_reliability(rec: dict, model: str, path: str | Path):
    """Accuracy vs mean confidence per equal-width bin, before and after temperature scaling."""
    fig = _figure(9, 4.2)
    axes = fig.subplots(1, 2, sharey=True)
    n = len(rec["reliability_before"]["count"]) - 1  # the last bin holds confidence == 1.0
    width = 1.0 / n
    panels = (
        ("reliability_before", "before", "T = 1", "before"),
        ("reliability_after", "after", f"T = {rec['temperature']:.3f}", "after"),
    )
    for ax, (key, which, label, figs) in zip(axes, panels, strict=True):
        b = rec[key]
        acc, count = list(b["accuracy"]), list(b["count"])
        conf = list(b["confidence"])
        # confidence exactly 1.0 is drawn with the top bin, as it lies on that bin's edge
        if count[n]:
            tot = count[n - 1] + count[n]
            acc[n - 1] = (acc[n - 1] * count[n - 1] + acc[n] * count[n]) / tot
            conf[n - 1] = (conf[n - 1] * count[n - 1] + conf[n] * count[n]) / tot
            count[n - 1] = tot
        lefts = [i * width for i in range(n)]
        shown = [i for i in range(n) if count[i]]
        ax.bar([lefts[i] for i in shown], [acc[i] for i in shown], width=width, align="edge",
               color="#4c72b0", edgecolor="white", label="accuracy")  # fmt: skip
        ax.bar([lefts[i] for i in shown], [conf[i] - acc[i] for i in shown], width=width,
               bottom=[acc[i] for i in shown], align="edge", color="#dd8452", alpha=0.45,
               label="gap to confidence")  # fmt: skip
        ax.plot([0, 1], [0, 1], color="gray", linestyle="--", linewidth=1, label="perfect")
        f = rec[figs]
        ax.set_title(
            f"{which} ({label}): ECE {f['ece']:.3f}, MCE {f['mce']:.3f}, NLL {f['nll']:.3f}",
            fontsize=10,
        )
        ax.set_xlabel(f"top-1 confidence ({n} equal-width bins)")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
    axes[0].set_ylabel(f"accuracy on the {rec['evaluated_on']} images")
    axes[0].legend(loc="upper left", fontsize=8)
    fig.suptitle(f"{model}: reliability on {rec['after']['images']} {rec['evaluated_on']} images")
    fig.tight_layout()
    _save(fig, path)
    return fig


def plot_risk_coverage(recs: list[dict], path: str | Path):
    """Error rate of the automatic decisions vs the share decided, most confident first; a
    dot marks each model's review threshold."""
    fig = _figure(6.5, 4.4)
    ax = fig.subplots()
    for rec in recs:
        rc = rec["risk_coverage"]
        (line,) = ax.plot(
            rc["coverage"], [100 * r for r in rc["risk"]],
            label=f"{rec['model']} (AURC {rec['aurc']:.4f})",
        )  # fmt: skip
        r, split = rec["review"], rec["evaluated_on"]
        if r.get("threshold") is not None and r[f"{split}_coverage"]["count"]:
            acc = r[f"{split}_auto_accuracy"]["value"]
            ax.plot([r[f"{split}_coverage"]["value"]], [100 * (1 - acc)], "o",
                    color=line.get_color())  # fmt: skip
    ax.set_xlabel("coverage (share decided automatically)")
    ax.set_ylabel("risk: error rate of the automatic decisions (%)")
    split = recs[0]["evaluated_on"] if recs else "test"
    ax.set_title(f"risk-coverage on the {split} images (dot: review threshold)", fontsize=10)
    ax.set_xlim(0, 1)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    return fig


def write_plots(results: dict, out: Path) -> None:
    cal = results["calibration"]
    plots: dict = {"reliability": {}}
    shipped = [r for r in cal["rows"] if r.get("shipped") and "error" not in r]
    try:
        for rec in shipped:
            name = f"reliability_{rec['model']}.png"
            plot_reliability(rec, rec["model"], Path(out) / name)
            plots["reliability"][rec["model"]] = name
        if shipped:
            plot_risk_coverage(shipped, Path(out) / "risk_coverage.png")
            plots["risk_coverage"] = "risk_coverage.png"
    except Exception as e:  # a picture must never cost the run its numbers and exports
        results.setdefault("plot_errors", []).append(f"calibration: {type(e).__name__}: {e}")
    cal["plots"] = plots


def _f(v, fmt=".4f") -> str:
    return "-" if v is None else format(v, fmt)


def _share_cell(s: dict | None) -> str:
    if not s or s.get("value") is None:
        return "-"
    return f"{s['value']:.2%} ({s['count']}/{s['of']}) [{s['ci95_low']:.1%}, {s['ci95_high']:.1%}]"


def _calibration_table(rows: list[dict]) -> list[str]:
    head = ["model", "seed", "fold", "temperature", "ECE before -> after", "MCE before -> after",
            "NLL before -> after", "Brier before -> after", "note"]  # fmt: skip
    body = []
    for r in rows:
        if "error" in r:
            body.append([r["model"], str(r["seed"]), str(r["fold"]), "-", "-", "-", "-", "-",
                         f"failed: {r['error']}"])  # fmt: skip
            continue
        b, a = r["before"], r["after"]
        cells = [f"{_f(b[k])} -> {_f(a[k])}" for k in ("ece", "mce", "nll", "brier")]
        notes = ["**temperature scaling made NLL worse**"] if r["nll_worse_after"] else []
        if r.get("temperature_at_search_bound"):
            notes.append("temperature at the edge of the search range (0.05-20)")
        note = "; ".join(notes)
        body.append([r["model"], str(r["seed"]), "-" if r["fold"] is None else str(r["fold"]),
                     f"{r['temperature']:.3f}", *cells, note])  # fmt: skip
    return [head, body]


def _review_table(rows: list[dict]) -> list[str]:
    head = ["model", "seed", "target accuracy", "threshold", "val coverage", "val auto accuracy",
            "coverage (eval)", "auto accuracy (eval)", "AURC"]  # fmt: skip
    body = []
    for r in rows:
        if "error" in r:
            continue
        v, split = r["review"], r["evaluated_on"]
        if v["threshold"] is None:
            body.append([r["model"], str(r["seed"]), f"{v['target_accuracy']}",
                         "none", v["reason"], "", "", "", _f(r["aurc"])])  # fmt: skip
            continue
        body.append([r["model"], str(r["seed"]), f"{v['target_accuracy']}",
                     f"{v['threshold']:.4f}", _share_cell(v["val_coverage"]),
                     _share_cell(v["val_auto_accuracy"]), _share_cell(v[f"{split}_coverage"]),
                     _share_cell(v[f"{split}_auto_accuracy"]), _f(r["aurc"])])  # fmt: skip
    return [head, body]


def markdown(results: dict) -> list[str]:
    """The report's calibration, review-threshold and explanation sections."""
    cal = results.get("calibration")
    parts: list[str] = []
    if cal and cal.get("rows"):
        rows = cal["rows"]
        split = next((r["evaluated_on"] for r in rows if "evaluated_on" in r), "test")
        parts += [
            "## Calibration",
            f"Temperature scaling fitted on the **validation** images only (NLL, golden-section "
            f"search); ECE ({cal['n_bins']} equal-width bins) and MCE by torchmetrics, NLL "
            f"(nats) and multiclass Brier, all measured on the **{split}** images with FP32 "
            "logits of the best checkpoint, before and after. Lower is better for all four.",
            md_table(*_calibration_table(rows)),
        ]
        for model, png in (cal.get("plots") or {}).get("reliability", {}).items():
            parts.append(f"![{model}: reliability diagram before and after temperature "
                         f"scaling]({png})")  # fmt: skip
        if cal.get("variants"):
            head = ["model", "variant", "precision", "ECE before -> after",
                    "NLL before -> after", "Brier before -> after"]  # fmt: skip
            body = [[v["model"], v["variant"], str(v.get("precision")),
                     *(f"{_f(v['before'][k])} -> {_f(v['after'][k])}"
                       for k in ("ece", "nll", "brier"))] for v in cal["variants"]]  # fmt: skip
            parts += [
                "### Deployment variants that passed fidelity",
                f"Numpy, on each variant's own logits of the {split} images, with its model's "
                "temperature (the one its file carries).",
                md_table(head, body),
            ]
        parts += [
            "## Review threshold (operating point)",
            f"On the validation images, the smallest calibrated-confidence threshold whose "
            f"automatic decisions reach the target accuracy "
            f"({cal['target_accuracy']}); below it an image goes to an inspector. Coverage "
            f"(share decided automatically) and the accuracy of those decisions are then "
            f"measured on the {split} images, with Clopper-Pearson 95% intervals. AURC: area "
            "under the risk-coverage curve (lower is better).",
            md_table(*_review_table(rows)),
        ]
        if (cal.get("plots") or {}).get("risk_coverage"):
            parts.append(f"![risk-coverage curves]({cal['plots']['risk_coverage']})")
    parts += explanations_markdown(results)
    return parts


def explanations_markdown(results: dict) -> list[str]:
    ex = results.get("explanations")
    if not ex:
        return []
    parts = [
        "## Explanations (Grad-CAM)",
        f"Grad-CAM of the predicted class at {ex.get('layer_note', 'the last convolutional block')}"
        f", for every misclassified {ex.get('split', 'test')} image and one correct image per "
        "class; titles: true class / prediction / its calibrated probability.",
    ]
    if ex.get("error"):
        parts.append(f"Not drawn: {ex['error']}")
    for model, items in (ex.get("models") or {}).items():
        if isinstance(items, dict) and items.get("error"):
            parts += [f"### {model}", f"Not drawn: {items['error']}"]
            continue
        wrong = sum(1 for i in items if i["kind"] == "misclassified")
        parts.append(f"### {model}: {wrong} misclassified, {len(items) - wrong} correct")
        total = (ex.get("misclassified_total") or {}).get(model)
        if total and total > wrong:
            parts.append(
                f"{total} test images are misclassified; the first {wrong} (in split order) "
                "are drawn."
            )
        parts.append("\n".join(
            f"![{i['true']} / {i['predicted']} / p={i['probability']:.3f}: {i['file']}]"
            f"({i['png']})" for i in items))  # fmt: skip
    return parts
