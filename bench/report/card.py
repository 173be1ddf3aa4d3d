"""The model card beside every export (exports/<model>.card.md) and the decision metadata
stamped into the exported files (neu_bench.temperature, .review_threshold, .model_card).

Sections follow Mitchell et al. 2019, "Model Cards for Model Reporting" (FAT* '19): model
details, intended use, factors, metrics, evaluation data, training data, quantitative
analyses, ethical considerations, caveats and recommendations. Every figure is read from
results.json; nothing here measures.
"""

from __future__ import annotations

import json
from pathlib import Path

NEU_LICENCE = "academic research use only (not for commercial use), as released by its authors"
NEU_CITATION = (
    'K. Song and Y. Yan, "A noise robust method based on completed local binary patterns for '
    'hot-rolled steel strip surface defects," Applied Surface Science 285 (2013) 858-864.'
)


def _is_neu(results: dict) -> bool:
    classes = set((results.get("dataset") or {}).get("classes", {}))
    return classes == {"crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale",
                       "scratches"}  # fmt: skip


def review_metadata(rec: dict | None) -> dict | None:
    """neu_bench.review_threshold: the threshold (or null and why), target, figures."""
    if rec is None:
        return None
    r, split = rec["review"], rec["evaluated_on"]
    out = {k: r[k] for k in ("threshold", "target_accuracy", "chosen_on") if k in r}
    if r["threshold"] is None:  # every image goes to review: why, and no coverage figures
        out["reason"] = r.get("reason")
        return out
    for part in ("val", split):
        cov, acc = r.get(f"{part}_coverage"), r.get(f"{part}_auto_accuracy")
        if cov:
            out.update({f"{part}_coverage": cov["value"], f"{part}_images": cov["of"]})
        if acc:
            out[f"{part}_auto_accuracy"] = acc["value"]
    return out


def summary(results: dict, entry: dict, rec: dict | None) -> dict:
    """The card's headline figures, for the file's metadata (neu_bench.model_card)."""
    from bench.summary import best_rows

    row = best_rows(results).get(entry["model"], {})
    env = results.get("environment") or {}
    ds = results.get("dataset") or {}
    s = {
        "model": entry["model"],
        "dataset": "NEU-CLS" if _is_neu(results) else Path(ds.get("root", "?")).name,
        "licence": NEU_LICENCE if _is_neu(results) else "see the dataset's own terms",
        "split_hash": ds.get("split_hash"),
        "accuracy_split": row.get("accuracy_split"),
        "test_accuracy": row.get("test_accuracy"),
        "test_accuracy_ci95": [
            row.get("test_accuracy_ci95_low"),
            row.get("test_accuracy_ci95_high"),
        ],
        "machine": env.get("cpu") or env.get("device"),
        "cpu_isa": env.get("cpu_isa_label"),
        "deployment_variant": (entry.get("recommended") or {}).get("variant") or "ort_fp32",
        "card": f"{entry['model']}.card.md",
    }
    if rec:
        s.update(temperature=rec["temperature"], ece_before=rec["before"]["ece"],
                 ece_after=rec["after"]["ece"], review_threshold=rec["review"]["threshold"])  # fmt: skip
    return s


def stamp_exports(results: dict, out: Path, reporter) -> None:
    """Temperature, review threshold and card summary into each exported ONNX file (the FP32
    one and the recommended copy), and exports/<model>.card.md beside them."""
    from bench.report.calibration import shipped_record
    from exports.quantize import update_metadata
    from neu._io import atomic_write_text

    out = Path(out)
    for entry in results.get("exports") or []:
        if entry.get("error") or not entry.get("path"):
            continue
        rec = shipped_record(results, entry["model"])
        values = {"model_card": json.dumps(summary(results, entry, rec), sort_keys=True)}
        if rec:
            values["temperature"] = repr(float(rec["temperature"]))
            values["review_threshold"] = json.dumps(review_metadata(rec), sort_keys=True)
        paths = [out / entry["path"]]
        rp = entry.get("recommended") or {}
        if rp.get("kind") == "onnx" and rp.get("path") != entry["path"]:
            paths.append(out / rp["path"])
        for p in paths:
            update_metadata(p, values)
        card = out / "exports" / f"{entry['model']}.card.md"
        atomic_write_text(card, card_markdown(results, entry, rec))
        entry["card"] = str(card.relative_to(out))
        entry["temperature"] = rec["temperature"] if rec else None
        entry["review_threshold"] = rec["review"]["threshold"] if rec else None
        reporter.log(f"[{entry['model']}] model card {card}; metadata stamped in "
                     + ", ".join(str(p.relative_to(out)) for p in paths))  # fmt: skip


def _num(v, fmt: str) -> str:
    return "n/a" if v is None else format(v, fmt)


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}%"


def _share(s: dict | None) -> str:
    if not s or s.get("value") is None:
        return "n/a"
    return (f"{_pct(s['value'])} ({s['count']}/{s['of']}; 95% CI "
            f"[{_pct(s['ci95_low'])}, {_pct(s['ci95_high'])}])")  # fmt: skip


def _robustness(results: dict, model: str) -> str:
    """The corruption benchmark's per-variant summary for `model` (results.json robustness)."""
    rob = results.get("robustness")
    if not rob:
        return "Not measured in this run (no corruption benchmark in results.json)."
    summary = rob.get("summary") if isinstance(rob, dict) else None
    mine = [s for s in summary or [] if s.get("model") == model]
    if not mine:
        return "results.json `robustness` holds no entry for this model."
    snr_levels = sorted(
        {db for s in mine for db in s["accuracy_at_snr_db"]}, key=float, reverse=True
    )
    head = ["variant", "clean", "mean corruption", "worst condition"]
    lines = ["| " + " | ".join(head + [f"{db} dB" for db in snr_levels]) + " |"]
    lines.append("|" + "---|" * (len(head) + len(snr_levels)))
    for s in mine:
        worst = (
            f"{s['worst_condition']} ({_pct(s['worst_accuracy'])})" if s["worst_condition"] else "-"
        )
        snr = [_pct(s["accuracy_at_snr_db"].get(db)) for db in snr_levels]
        cells = [
            s["variant"],
            _pct(s["clean_accuracy"]),
            _pct(s["mean_corruption_accuracy"]),
            worst,
        ]
        lines.append("| " + " | ".join(cells + snr) + " |")
    verdict = rob.get("verdict") or {}
    if verdict.get("most_robust"):
        lines.append(f"\nMost robust model in this run: {verdict['most_robust']}.")
    return "measured on the held-out test images (see report.md).\n\n" + "\n".join(lines)


def _deployment(results: dict, entry: dict) -> str:
    rec = entry.get("recommended") or {}
    parity = (f"FP32 ONNX parity with PyTorch: {'PASS' if entry.get('parity_passed') else 'FAIL'}"
              f" (max |Δ logit| {_num(entry.get('max_abs_diff'), '.2e')})")  # fmt: skip
    if not rec.get("variant"):
        return f"{parity}. Recommended variant: none measured (FP32 ONNX file: `{entry['path']}`)."
    dep = next((d for d in results.get("deployment") or []
                if d["model"] == entry["model"] and d["variant"] == rec["variant"]), {})  # fmt: skip
    return (
        f"{parity}. Recommended variant: **{rec['variant']}** (`{rec.get('path')}`, "
        f"{dep.get('precision', '?')}): top-1 agreement with PyTorch FP32 "
        f"{_pct(dep.get('agreement'))}, accuracy change {dep.get('accuracy_delta_pp')} pp on "
        f"{dep.get('fidelity_images')} images ({dep.get('fidelity_source')}), batch-1 p50 "
        f"{_num(dep.get('latency_ms_p50'), '.2f')} ms ({_num(dep.get('speedup_vs_torch_fp32'), '.2f')}x "
        "torch FP32 in the same rounds)."
    )


def _calibration(rec: dict | None) -> list[str]:
    if rec is None:
        return ["Calibration was not measured for this export."]
    b, a, split = rec["before"], rec["after"], rec["evaluated_on"]
    rows = [f"| {k.upper() if k != 'brier' else 'Brier'} | {b[k]:.4f} | {a[k]:.4f} |"
            for k in ("ece", "mce", "nll", "brier")]  # fmt: skip
    out = [
        f"Temperature **{rec['temperature']:.4f}**, fitted on the {rec['fit_images']} validation "
        f"images only; figures on the {b['images']} {split} images (ECE/MCE: 15 equal-width "
        "bins). The deployed file divides its logits by this temperature.",
        "| | before | after |",
        "|---|---|---|",
        *rows,
    ]
    if rec["nll_worse_after"]:
        out.append(f"**Temperature scaling made the {split} NLL worse** "
                   f"({b['nll']:.4f} -> {a['nll']:.4f}): the validation set that fitted it "
                   "is small or unlike the test images.")  # fmt: skip
    return out


def _review(rec: dict | None) -> list[str]:
    if rec is None:
        return ["No review threshold (calibration not measured)."]
    r, split = rec["review"], rec["evaluated_on"]
    if r["threshold"] is None:
        return [f"**No review threshold**: {r['reason']}. `exports predict` sends every image "
                "to review unless given `--threshold`."]  # fmt: skip
    return [
        f"Target accuracy of the automatic decisions: {r['target_accuracy']}. Threshold "
        f"(calibrated top-1 probability, chosen on validation): **{r['threshold']:.4f}**.",
        f"- validation: coverage {_share(r['val_coverage'])}, accuracy of the automatic "
        f"decisions {_share(r['val_auto_accuracy'])}",
        f"- {split}: coverage {_share(r[f'{split}_coverage'])}, accuracy of the automatic "
        f"decisions {_share(r[f'{split}_auto_accuracy'])}",
        f"- area under the risk-coverage curve ({split}): {rec['aurc']:.4f}",
    ]


def card_markdown(results: dict, entry: dict, rec: dict | None) -> str:
    """The model card of one export (Mitchell et al. 2019 sections)."""
    from bench.summary import best_rows

    name = entry["model"]
    row = best_rows(results).get(name, {})
    ds = results.get("dataset") or {}
    split = row.get("accuracy_split", "test")
    parts = [
        f"# Model card: {name}",
        f"Generated by neu-bench from `results.json` of run `{results.get('name')}` "
        f"({results.get('updated') or results.get('created')}). Sections follow Mitchell et al. "
        "2019, *Model Cards for Model Reporting*.",
        "## Model details",
        *_model_details(results, entry, row),
        "## Intended use",
        _intended_use(_is_neu(results)),
        "## Factors",
        "Defect class (per-class scores in report.md); acquisition conditions (lighting, "
        "camera, steel grade, image size) are not varied by NEU-CLS, so their effect is "
        "unknown. Robustness to image corruptions: " + _robustness(results, name),
        "## Metrics",
        "Top-1 accuracy with its Clopper-Pearson 95% interval; calibration: expected and "
        "maximum calibration error (15 equal-width bins), negative log-likelihood, multiclass "
        "Brier score; operating point: coverage and accuracy of automatic decisions at the "
        "review threshold, area under the risk-coverage curve.",
        "## Evaluation data",
        _evaluation_data(ds, split),
        "## Training data",
        *_training_data(ds, _is_neu(results)),
        "## Quantitative analyses",
        _headline_accuracy(row, split),
        "### Calibration",
        *_calibration(rec),
        "### Review threshold",
        *_review(rec),
        "### Deployment",
        _deployment(results, entry),
        *_ethics_and_caveats(results, ds.get("split") or {}),
    ]
    return _join(parts) + "\n"


def _model_details(results: dict, entry: dict, row: dict) -> list[str]:
    """Architecture and how it was trained, its files, recipe and machine."""
    from bench.report.tables import cpu_isa_text

    env, ds = results.get("environment") or {}, results.get("dataset") or {}
    recipe = results.get("recipe") or {}
    return [
        f"- Architecture: torchvision `{entry['model']}`, new linear head with "
        f"{len(ds.get('classes') or {})} outputs; weights: {row.get('weights')}; seed "
        f"{row.get('seed')}"
        + (f", fold {row.get('fold')}" if row.get("fold") is not None else "")
        + f"; best epoch {row.get('best_epoch')} of {row.get('epochs')} (picked on validation).",
        f"- Files: `{entry['path']}` (FP32 ONNX); checkpoint `{row.get('checkpoint')}`.",
        f"- Recipe: {', '.join(f'{k}={v}' for k, v in recipe.items())}; training precision "
        f"{row.get('amp')} ({row.get('amp_reason')}).",
        f"- Machine: {env.get('device') or env.get('cpu')} (CPU {env.get('cpu')}, "
        f"{cpu_isa_text(env)}, {env.get('torch_threads')} threads); torch {env.get('torch')}, "
        f"onnxruntime {env.get('onnxruntime')}.",
    ]


def _intended_use(neu: bool) -> str:
    # NEU-CLS's licence forbids commercial use, so a card trained on it must say so.
    if neu:
        return (
            "Classifying single grayscale images of hot-rolled steel strip surfaces into the six "
            "NEU-CLS defect classes, with images the model is unsure about sent to a human "
            "inspector (see the review threshold). Not for images of other materials, cameras or "
            "defect types than those it was trained on, and not for commercial use when trained "
            "on NEU-CLS (see the licence)."
        )
    return (
        "Classifying images into the classes it was trained on, with uncertain images sent "
        "to review. Not for images unlike its training data."
    )


def _evaluation_data(ds: dict, split: str) -> str:
    sp = ds.get("split") or {}
    return (
        f"The {sp.get(f'{split}_images')} {split} images of split `{ds.get('split_hash')}` "
        f"(seed {sp.get('seed')}; stratified, duplicate-aware; they chose nothing). The "
        f"{sp.get('val_images')} validation images picked the epoch, the temperature and the "
        "review threshold."
    )


def _training_data(ds: dict, neu: bool) -> list[str]:
    """Dataset, licence, citation and split, as list items."""
    sp = ds.get("split") or {}
    counts = ", ".join(f"{c} {n}" for c, n in (ds.get("classes") or {}).items())
    dataset = "NEU-CLS (Northeastern University surface defect database)" if neu else ds.get("root")
    return [
        f"- Dataset: {dataset}; {ds.get('num_images')} images; classes: {counts}.",
        f"- Licence: {NEU_LICENCE if neu else 'see the dataset'}.",
        *([f"- Citation: {NEU_CITATION}"] if neu else []),
        f"- Split: {sp.get('train_images')} train / {sp.get('val_images')} val / "
        f"{sp.get('test_images')} test, split hash `{ds.get('split_hash')}`, dataset hash "
        f"`{ds.get('dataset_hash')}`"
        + (f", limit {sp.get('limit_per_class')} per class" if sp.get("limit_per_class") else "")
        + ".",
    ]


def _headline_accuracy(row: dict, split: str) -> str:
    """The headline split's accuracy with its count and Clopper-Pearson interval, and macro-F1."""
    acc = (f"{_pct(row.get(f'{split}_accuracy'))} ({row.get(f'{split}_correct')}/"
           f"{row.get(f'{split}_images')}; Clopper-Pearson 95% CI "
           f"[{_pct(row.get(f'{split}_accuracy_ci95_low'))}, "
           f"{_pct(row.get(f'{split}_accuracy_ci95_high'))}])")  # fmt: skip
    f1 = _num(row.get(f"{split}_macro_f1"), ".3f")
    return f"{split.capitalize()} accuracy: **{acc}**; macro-F1 {f1}."


def _ethics_and_caveats(results: dict, sp: dict) -> list[str]:
    """The last two sections; a quick run's card says plainly that the model is not for use."""
    parts = [
        "## Ethical considerations",
        "Automatic decisions replace an inspector's only above the review threshold; the "
        "share of images still reviewed is the coverage's complement. A wrong automatic "
        "decision lets a defective strip pass or scraps a good one: set the target accuracy "
        "from that cost, not from convenience.",
        "## Caveats and recommendations",
        "- The intervals are wide: a few hundred test images cannot distinguish 99.4% from "
        "99.7%. The threshold was chosen on the validation images (few); its test coverage "
        "and accuracy are the honest estimate.",
        "- The temperature and threshold hold for images like the training data; re-fit them "
        "(`bench calibrate`) on a validation set from the line's own camera before trusting "
        "them there.",
        "- Grad-CAM overlays (report.html) show where the prediction's gradient concentrates, "
        "not a causal explanation.",
    ]
    if results.get("quick") or (sp.get("limit_per_class") or 10**9) < 50:
        parts.append("- **Trained on a small subset (a quick look): not a deployable model.**")
    return parts


def _join(parts: list[str]) -> str:
    """Paragraphs apart, but consecutive list items and table rows together (a blank line
    would end the list or the table)."""

    def kind(p: str | None) -> str | None:
        if p is None or not p.startswith(("|", "- ")):
            return None
        return "table" if p.startswith("|") else "list"

    out: list[str] = []
    prev = None
    for p in parts:
        same = kind(p) is not None and kind(p) == kind(prev)
        out.append(("\n" if same else "\n\n") + p if out else p)
        prev = p
    return "".join(out)
