"""Views of the results dict: results.json, results.csv, report.md and rich tables.

The data is the dict; everything here only formats it, so every view shows the same numbers.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from bench.measure.placement import placement_note
from bench.summary import ALPHA, OPTIMISTIC, headline_split
from neu._io import atomic_write_json, atomic_write_text

ROW_COLUMNS = [
    "model",
    "seed",
    "fold",
    "status",
    "error",
    "weights",
    "amp",
    "amp_reason",
    "accuracy_split",
    "test_accuracy",
    "test_correct",
    "test_images",
    "test_accuracy_ci95_low",
    "test_accuracy_ci95_high",
    "test_macro_f1",
    "val_accuracy",
    "val_loss",
    "best_epoch",
    "epochs",
    "lr",
    "head_lr",
    "train_seconds",
    "eval_seconds",
    "compile_seconds",
    "compile_error",
    "train_img_s",
    "data_ms_per_step",
    "compute_ms_per_step",
    "pipeline_efficiency",
    "params_m",
    "gflops",
]

SPEED_COLUMNS = [
    "model",
    "runtime",
    "provider",
    "precision",
    "channels_last",
    "batch_size",
    "threads",
    "latency_ms_p50",
    "latency_ms_p90",
    "latency_ms_p99",
    "latency_ms_mean",
    "latency_ms_std",
    "n",
    "throughput_img_s",
    "max_batch",
    "rounds",
    "p50_spread_pct",
    "cpu_contention_pct",
    "nodes_by_provider",
]


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def cpu_isa_text(env: dict) -> str:
    """'ISA AVX2 (torch AVX2)': what the speed figures were measured with."""
    isa = env.get("cpu_isa") or {}
    label = env.get("cpu_isa_label") or "unknown"
    cap = isa.get("torch_capability")
    cls = env.get("cpu_isa_class")
    return f"ISA {label}" + (f" (torch {cap})" if cap else "") + (f", class {cls}" if cls else "")


def _num(v, fmt=".2f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, fmt)


def _acc_cell(s: dict) -> str:
    if s["accuracy_mean"] is None:
        return "failed"
    lo, hi = s["accuracy_ci95"] or (None, None)
    text = _pct(s["accuracy_mean"])
    if s["accuracy_std"]:
        text += f" ± {100 * s['accuracy_std']:.2f}"
    text += f" ({s['correct']}/{s['images']})"
    if lo is not None:
        text += f" [{100 * lo:.1f}, {100 * hi:.1f}]"
    return text


def _vs_best_cell(s: dict) -> str:
    if s.get("best"):
        return "most accurate"
    p = s.get("p_value_vs_best")
    if p is None:
        return "-"
    return f"{'indistinguishable' if p >= ALPHA else 'worse'} (p={p:.2g})"


def _fold_cell(s: dict) -> str:
    if s.get("fold_accuracy_mean") is None:
        return "-"
    return f"{_pct(s['fold_accuracy_mean'])} ± {100 * s['fold_accuracy_std']:.2f}"


def summary_table_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    head = [
        "model",
        "weights",
        "precision",
        "params (M)",
        "GFLOPs",
        f"{'test acc' if headline_split(results['rows']) == 'test' else 'val acc (optimistic)'}"
        " (correct/images) [95% CI]",
        "vs best (McNemar)",
        "per-fold acc",
        "macro-F1",
        "ckpt MB",
        "ONNX MB",
        "train time",
        "train img/s",
        "pipeline eff.",
        "runs ok",
    ]
    body = []
    info = results.get("models", {})
    for s in results.get("summary") or []:
        body.append(
            [
                s["model"],
                str(s["weights"]),
                s.get("amp") or "-",
                _num(s["params_m"], ".1f"),
                _num(s["gflops"], ".2f"),
                _acc_cell(s),
                _vs_best_cell(s),
                _fold_cell(s),
                _num(s["macro_f1_mean"], ".4f"),
                _num(info.get(s["model"], {}).get("checkpoint_size_mb"), ".1f"),
                _num(info.get(s["model"], {}).get("onnx_size_mb"), ".1f"),
                "-" if s["train_seconds_mean"] is None else f"{s['train_seconds_mean']:.0f} s",
                _num(s.get("train_img_s_mean"), ".1f"),
                _num(s.get("pipeline_efficiency_mean"), ".2f"),
                f"{s['runs'] - s['failed']}/{s['runs']}",
            ]
        )
    return head, body


def speed_table_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    head = [
        "model",
        "runtime",
        "provider",
        "precision",
        "batch",
        "threads",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "img/s",
        "n",
        "rounds",
        "p50 spread %",
    ]
    body = []
    for r in results.get("speed", []):
        if r.get("phase") == "train":
            continue
        if r.get("error"):
            body.append([r["model"], r.get("runtime", "?"), "error: " + r["error"]] + [""] * 10)
            continue
        prec = r["precision"] + (" CL" if r.get("channels_last") else "")
        elsewhere = placement_note(r)  # a GPU row that still ran nodes on the CPU says so
        body.append(
            [
                r["model"],
                r["runtime"],
                r["provider"] + (f" ({elsewhere})" if elsewhere else ""),
                prec,
                str(r["batch_size"]) + (" (max)" if r.get("max_batch") else ""),
                str(r["threads"]),
                _num(r["latency_ms_p50"]),
                _num(r["latency_ms_p90"]),
                _num(r["latency_ms_p99"]),
                _num(r["throughput_img_s"], ".1f"),
                str(r["n"]),
                str(r.get("rounds", 1)),
                _num(r.get("p50_spread_pct"), ".1f"),
            ]
        )
    return head, body


def training_table_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    head = [
        "model",
        "device",
        "precision",
        "batch",
        "threads",
        "train img/s (epochs 2+)",
        "data ms/step",
        "compute ms/step",
        "pipeline efficiency",
    ]
    body = [
        [
            r["model"],
            r["provider"],
            r["precision"],
            str(r["batch_size"]),
            str(r["threads"]),
            _num(r["train_img_s"], ".1f")
            + (" (epoch 1)" if r["train_img_s_includes_first_epoch"] else ""),
            _num(r.get("data_ms_per_step"), ".1f"),
            _num(r.get("compute_ms_per_step"), ".1f"),
            _num(r.get("pipeline_efficiency"), ".2f"),
        ]
        for r in results.get("speed", [])
        if r.get("phase") == "train"
    ]
    return head, body


def ratio_table_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    head = [
        "model",
        "torch p50 ms (b1)",
        "ORT p50 ms (b1)",
        "ORT speed-up (b1)",
        "torch img/s (b32)",
        "ORT img/s (b32)",
        "ORT/torch (b32)",
    ]
    body = []
    for r in results.get("speed_ratios", []):
        vals = list(r.values())[1:]
        body.append([r["model"]] + [_num(v) for v in vals])
    return head, body


def exports_table_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    head = [
        "model",
        "file",
        "MB",
        "provider",
        "images",
        "max |Δ| logits",
        "max rel Δ",
        "top-1 disagree",
        "acc torch",
        "acc ONNX",
        "parity",
    ]
    body = []
    for e in results.get("exports", []):
        body.append(
            [
                e["model"],
                e["path"],
                _num(e.get("size_mb"), ".1f"),
                str(e.get("provider", "-")),
                str(e.get("n_images", "-")),
                _num(e.get("max_abs_diff"), ".2e"),
                _num(e.get("max_rel_diff"), ".2e"),
                str(e.get("top1_disagreements", "-")),
                _pct(e.get("torch_accuracy")),
                _pct(e.get("onnx_accuracy")),
                "PASS" if e.get("parity_passed") else f"FAIL {e.get('error') or ''}".strip(),
            ]
        )
    return head, body


def deployment_table_rows(results: dict, model: str) -> tuple[list[str], list[list[str]]]:
    """One model's deployment variants: speed (same rounds), size and fidelity."""
    head = [
        "variant",
        "runtime / provider",
        "precision",
        "p50 ms (b1)",
        "p99 ms (b1)",
        "img/s (b32)",
        "vs torch FP32",
        "MB",
        "agreement",
        "accuracy",
        "Δ pp",
        "max |Δ logit|",
        "fidelity",
    ]
    body = []
    for r in results.get("deployment", []):
        if r["model"] != model:
            continue
        if r.get("skipped"):
            body.append([r["variant"], r["runtime"], r["precision"]] + ["-"] * 9
                        + [f"skipped: {r['skipped']}"])  # fmt: skip
            continue
        speedup = r.get("speedup_vs_torch_fp32")
        verdict = (
            "PASS" if r.get("passed") else "FAIL " + "; ".join(r.get("fidelity_failures") or [])
        )
        if r.get("passed") is None and r.get("fidelity"):
            verdict = r["fidelity"]  # "not judged (random weights)": never PASS
        variant = r["variant"]
        if r.get("candidate") and variant == "ort_int8":
            variant += f" ({r['candidate']}, chosen)"
        if r.get("error"):
            verdict = f"error: {r['error']}"
        if r.get("compile_seconds_by_batch"):
            secs = ", ".join(f"b{b}: {v:.1f} s" for b, v in r["compile_seconds_by_batch"].items())
            verdict += f" (compile {secs}, not in latency)"
        delta = r.get("accuracy_delta_pp")
        body.append(
            [
                variant,
                f"{r['runtime']} / {r.get('provider') or '-'}",
                r["precision"],
                _num(r.get("latency_ms_p50")),
                _num(r.get("latency_ms_p99")),
                _num(r.get("throughput_img_s"), ".1f"),
                "-" if speedup is None else f"{speedup:.2f}x",
                _num(r.get("size_mb"), ".1f"),
                _pct(r.get("agreement")),
                _pct(r.get("test_accuracy")),
                "-" if delta is None else f"{delta:+.2f}",
                _num(r.get("max_abs_logit_diff"), ".2e"),
                verdict.strip(),
            ]
        )
    return head, body


def deployment_markdown(results: dict) -> list[str]:
    rows = results.get("deployment") or []
    if not rows:
        return []
    env = results.get("environment", {})
    first = rows[0]
    parts = [
        "## Deployment variants",
        f"Measured on {env.get('cpu', '?')} ({cpu_isa_text(env)}), "
        f"{first.get('threads') or env.get('torch_threads')} threads. Every variant is timed "
        "at batch 1 in the same interleaved rounds as torch eager FP32 ('vs torch FP32' is "
        "the median of the per-round p50 ratios, >1: faster), then at batch 32 in a second "
        "window (INT8 candidates: the fastest two only). Fidelity: every "
        f"{first['fidelity_source']} image ({first['fidelity_images']}) through the variant, "
        "compared with torch eager FP32. FP32 variants need strict parity; reduced precision "
        "passes on the accuracy delta and top-1 agreement. A variant that fails is never "
        "recommended.",
    ]
    for model in dict.fromkeys(r["model"] for r in rows):
        parts += [f"### {model}", _md_table(*deployment_table_rows(results, model))]
    rec = results.get("recommendation") or {}
    lines = []
    for model, r in (rec.get("by_model") or {}).items():
        if not r.get("variant"):
            lines.append(f"- **{model}**: {r.get('recommendation') or 'none'} ({r.get('why')})")
            continue
        speedup = r.get("speedup_vs_torch_fp32")
        lines.append(
            f"- **{model}**: `{r['variant']}` ({r['runtime']}/{r['provider']}, {r['precision']}), "
            f"p50 {_num(r['latency_ms_p50'])} ms at batch 1"
            + ("" if speedup is None else f", {speedup:.2f}x torch eager FP32")
            + f", agreement {_pct(r.get('agreement'))}"
            + (
                ""
                if r.get("accuracy_delta_pp") is None
                else f", accuracy {r['accuracy_delta_pp']:+.2f} pp"
            )  # fmt: skip
            + f" ({cpu_isa_text(env)})"
        )
    if lines:
        parts += ["### Recommendation: the fastest variant that passed fidelity", "\n".join(lines)]
    if rec.get("pareto"):
        front = ", ".join(
            f"{p['model']}/{p['variant']} ({_num(p['latency_ms_p50'])} ms, "
            f"{_pct(p['test_accuracy'])})"
            for p in rec["pareto"]
        )
        parts.append(f"Accuracy-latency Pareto front over all models x passing variants: {front}.")
    for model, c in (results.get("int8_choice") or {}).items():
        secs = (c.get("step_seconds") or {}).get("step")
        parts.append(
            f"INT8 for **{model}** ({c.get('cpu_isa_class')}): {c.get('why')}"
            + ("" if secs is None else f"; the deployment step took {secs:.0f} s")
            + "."
        )
    if results.get("deployment_plot"):
        parts.append(
            f"![accuracy vs latency of the deployment variants]({results['deployment_plot']})"
        )
    return parts


def _md_table(head: list[str], body: list[list[str]]) -> str:
    def esc(c):
        return str(c).replace("|", "\\|")

    lines = ["| " + " | ".join(map(esc, head)) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(map(esc, row)) + " |" for row in body]
    return "\n".join(lines)


def markdown(results: dict) -> str:
    quick = results.get("quick")
    env = results.get("environment", {})
    parts = [f"# neu-bench {results.get('kind', 'run')}: {results.get('name', '')}"]
    if quick:
        parts.append(
            "> **QUICK PRESET**: a stratified subset, small images, few epochs, deployment "
            f"variants: {(results.get('run') or {}).get('variants', '?')}. A first look, not a "
            "benchmark result."
        )
    parts.append(
        f"Created {results.get('created')} on **{env.get('device', '?')}** "
        f"(torch {env.get('torch')}, torchvision {env.get('torchvision')}, "
        f"onnxruntime {env.get('onnxruntime')}, {env.get('torch_threads')} torch threads; "
        f"CPU {env.get('cpu', '?')}, {cpu_isa_text(env)})."
    )
    ds = results.get("dataset")
    if ds:
        sp = ds["split"]
        parts.append(
            f"Data: `{ds['root']}` ({ds['layout']}, {ds['num_images']} images, "
            f"{len(ds['classes'])} classes); split {sp['train_images']} train / "
            f"{sp['val_images']} val / {sp['test_images']} test (seed {sp['seed']}, "
            f"dataset {ds['dataset_hash'][:12]}, split {ds['split_hash'][:12]}). "
            f"Normalisation from the training split: mean {[round(v, 4) for v in ds['mean']]}, "
            f"std {[round(v, 4) for v in ds['std']]}."
        )
        if ds.get("excluded"):
            parts.append(
                f"Excluded files ({len(ds['excluded'])}): "
                + ", ".join(f"`{e['file']}` ({e['problem']})" for e in ds["excluded"])
            )
    if results.get("recipe"):
        r = results["recipe"]
        parts.append(
            "Recipe: "
            + ", ".join(f"{k}={v}" for k, v in r.items())
            + ". Weights used: "
            + ", ".join(f"{m}: {w}" for m, w in results.get("weights", {}).items())
        )
    parts += training_notes(results)
    if results.get("rows"):
        summary = results.get("summary") or []
        split = headline_split(results["rows"])
        parts.append("## Accuracy")
        if split == "test":
            parts.append(
                "Headline: **test accuracy**, on test images that chose nothing (the best "
                "epoch was picked on the validation images, then the test images were scored "
                "once with that checkpoint)."
            )
        else:
            parts.append(
                f"> Headline: **{OPTIMISTIC}**. There is no test split (--test-fraction 0): "
                "these images also chose the checkpoint, so the figure and its interval are "
                "biased upwards."
            )
        parts.append(_md_table(*summary_table_rows(results)))
        methods = {s["ci_method"] for s in summary if s["ci_method"]}
        if methods:
            parts.append("Intervals: " + "; ".join(sorted(methods)) + ".")
        tied = [s["model"] for s in summary if s.get("indistinguishable_from_best")]
        if len(tied) > 1:
            parts.append(
                f"Statistically indistinguishable from the most accurate model (exact McNemar "
                f"test on the same {split} images, p >= {ALPHA}): {', '.join(tied)}. The data "
                "cannot rank these models; choose between them on speed or size."
            )
        if results.get("comparisons"):
            parts += [
                "### Paired comparison (exact McNemar test)",
                f"Each cell: images only the row model got right / only the column model got "
                f"right, and the two-sided p-value; pairs use the same {split} images (same "
                "seed and fold), pooled over seeds and folds. p >= 0.05: no evidence that the "
                "two differ.",
                _md_table(*comparison_matrix(results["comparisons"])),
            ]
        parts += [
            "### Per model, seed and fold",
            _md_table(
                ROW_COLUMNS, [[_cell(r.get(c)) for c in ROW_COLUMNS] for r in results["rows"]]
            ),
        ]
    plots = results.get("plots") or {}
    if plots.get("training_curves"):
        parts += [
            "### Training curves",
            f"![training curves: train loss, validation loss and validation accuracy per "
            f"epoch, one line per model and seed]({plots['training_curves']})",
        ]
    for name, ev in results.get("evaluation", {}).items():
        classes = results["dataset"]["classes"]
        head = ["true \\ predicted", *classes]
        cm_rows = [
            [c, *map(str, row)] for c, row in zip(classes, ev["confusion_matrix"], strict=False)
        ]
        pc_rows = [
            [
                p["class"],
                f"{p['precision']:.3f}",
                f"{p['recall']:.3f}",
                f"{p['f1']:.3f}",
                str(p["support"]),
            ]
            for p in ev["per_class"]
        ]
        split_name = "test" if ev.get("evaluated_on") == "test" else "validation"
        parts.append(
            f"### Confusion matrix and per-class scores: {name} ({split_name} images"
            f"{', folds pooled' if ', ' in ev['metrics_file'] else ''})"
        )
        if name in plots.get("confusion", {}):
            parts.append(
                f"![{name}: {split_name} confusion matrix, colour = share of the true class]"
                f"({plots['confusion'][name]})"
            )
        parts += [
            _md_table(head, cm_rows),
            _md_table(["class", "precision", "recall", "F1", "support"], pc_rows),
        ]
        if ev["misclassified_count"]:
            shown = ev["misclassified"]
            parts.append(
                f"Misclassified: {ev['misclassified_count']} (first {len(shown)} below; all in "
                f"`{ev['metrics_file']}`)"
            )
            parts.append(
                _md_table(
                    ["file", "true", "predicted", "confidence"],
                    [
                        [m["file"], m["true"], m["predicted"], f"{m['confidence']:.3f}"]
                        for m in shown
                    ],
                )
            )
    from bench.report.calibration import markdown as calibration_markdown

    parts += calibration_markdown(results, _md_table)
    if results.get("speed"):
        parts += [
            "## Speed",
            f"On {env.get('cpu', '?')} ({cpu_isa_text(env)}). "
            "Latency of the model alone (inputs prepared before the clock), warm-up first, "
            "then at least the configured seconds and iterations; percentiles over all samples. "
            "Runtimes alternate over the rounds; p50/p90/p99 are medians over rounds, and "
            "the spread is (max - min) / min of the rounds' p50s.",
            _md_table(*speed_table_rows(results)),
        ]
        if plots.get("latency"):
            parts += [
                "### Latency distribution",
                "Drawn from the samples each speed row keeps (`latency_ms_samples` in "
                "results.json: every sample, or 1,000 evenly strided through longer runs).",
                f"![batch-1 latency per runtime: box p25-p75, line p50, whiskers p1-p99]"
                f"({plots['latency']})",
            ]
        train_head, train_body = training_table_rows(results)
        if train_body:
            parts += [
                "### Training",
                "Pipeline efficiency = compute / (data + compute), both timed inside the same "
                "training steps (data: index, augmentation, transfer; compute: forward, "
                "backward, step); below ~0.9 the data path starves the model.",
                _md_table(train_head, train_body),
            ]
        if results.get("speed_ratios"):
            parts += [
                "### ONNX Runtime vs PyTorch (CPU, same threads)",
                _md_table(*ratio_table_rows(results)),
            ]
    parts += deployment_markdown(results)
    from bench.report.robustness import markdown as robustness_markdown

    parts += robustness_markdown(results)
    if results.get("plot"):
        parts += ["## Accuracy vs latency", f"![accuracy vs batch-1 latency]({results['plot']})"]
    if results.get("exports"):
        parts += [
            "## ONNX exports and parity",
            f"Every {'test' if headline_split(results['rows']) == 'test' else 'validation'} "
            "image through PyTorch and ONNX Runtime at batch 1 and 32; passes when every "
            "top-1 agrees and max |Δ logits| is within the tolerance.",
            _md_table(*exports_table_rows(results)),
        ]
        from bench.report.serving import serving_markdown

        parts += serving_markdown(results)
    errors = list(plots.get("errors") or []) + list(results.get("plot_errors") or [])
    if errors:
        parts.append("Plots that could not be drawn: " + "; ".join(errors))
    return "\n\n".join(parts) + "\n"


def _minutes(seconds) -> str:
    return "-" if seconds is None else f"{seconds / 60:.1f} min"


def training_notes(results: dict) -> list[str]:
    """How the models were trained (precision and why, compile) and the sweep's wall time,
    expected against actual."""
    notes = []
    p = results.get("precision")
    if p:
        notes.append(f"Training precision: **{p['amp']}** ({p['amp_reason']}).")
    if results.get("compile"):
        failed = [r for r in results.get("rows", []) if r.get("compile_error")]
        notes.append(
            "torch.compile (inductor): compile time is reported apart from training time "
            "(`compile_seconds`)"
            + (
                "; fell back to eager for "
                + ", ".join(f"{r['model']} ({r['compile_error']})" for r in failed)
                if failed
                else ""
            )
            + "."
        )
    sw = results.get("sweep") or {}
    if sw:
        notes.append(sweep_note(sw))
    return notes


def sweep_note(sw: dict) -> str:
    """The sweep's wall time in this invocation: expected training against actual, and where
    the rest of the command's time went."""
    earlier = sw.get("runs_finished_earlier") or 0
    if sw.get("runs") and sw.get("runs_trained") == 0:
        expected = (
            f"nothing to train: all {sw['runs']} runs finished in an earlier invocation "
            "(their own training times are in the rows)"
        )
    else:
        why = sw.get("expected_from", "no estimate: too few batches")
        expected = f"expected {_minutes(sw.get('train_seconds_expected'))} of training ({why})"
        if earlier:
            expected += f"; {earlier} of {sw['runs']} runs had finished in an earlier invocation"
    phases = [f"{_minutes(sw.get('train_seconds_actual'))} of training (with per-epoch evaluation)"]
    if sw.get("speed_seconds_actual") is not None:
        phases.append(f"{_minutes(sw['speed_seconds_actual'])} of speed and deployment variants")
    if sw.get("robustness_seconds_actual") is not None:
        phases.append(f"{_minutes(sw['robustness_seconds_actual'])} of the corruption benchmark")
    if sw.get("export_seconds_actual") is not None:
        phases.append(f"{_minutes(sw['export_seconds_actual'])} of export and parity")
    return (
        f"Sweep wall time (this invocation): {expected}. Actual: {', '.join(phases)}; "
        f"{_minutes(sw.get('seconds_actual'))} for the whole command."
    )


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def csv_text(rows: list[dict], columns: list[str]) -> str:
    buf = io.StringIO()
    # Up to 1,000 latency samples per row belong in results.json, not in one CSV cell.
    extra = sorted({k for r in rows for k in r} - set(columns) - {"latency_ms_samples"})
    w = csv.DictWriter(buf, fieldnames=columns + extra, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def comparison_matrix(comparisons: list[dict]) -> tuple[list[str], list[list[str]]]:
    names = list(
        dict.fromkeys([c["model_a"] for c in comparisons] + [c["model_b"] for c in comparisons])
    )
    cell = {}
    for c in comparisons:
        p = f"p={c['p_value']:.2g}"
        cell[c["model_a"], c["model_b"]] = f"{c['a_only_correct']} / {c['b_only_correct']}, {p}"
        cell[c["model_b"], c["model_a"]] = f"{c['b_only_correct']} / {c['a_only_correct']}, {p}"
    body = [[a] + [cell.get((a, b), "") for b in names] for a in names]
    return ["row only / column only"] + names, body


def write_outputs(out: Path, results: dict, *, final: bool = False) -> None:
    """results.json, results.csv (+ speed.csv), report.md and report.html, each written
    atomically; on the final write also the plots (bench.report.plots) that both reports embed."""
    out = Path(out)
    if final:
        from bench.report.plots import write_plots

        results["plots"] = write_plots(out, results)
    atomic_write_json(out / "results.json", results)
    if results.get("rows"):
        atomic_write_text(out / "results.csv", csv_text(results["rows"], ROW_COLUMNS))
    if results.get("speed"):
        atomic_write_text(out / "speed.csv", csv_text(results["speed"], SPEED_COLUMNS))
    md = markdown(results)
    atomic_write_text(out / "report.md", md)
    from bench.report.html import markdown_to_html

    atomic_write_text(out / "report.html", markdown_to_html(md, base=out))


def print_tables(results: dict, console) -> None:
    from rich.table import Table

    def show(title, head, body):
        if not body:
            return
        t = Table(title=title)
        for h in head:
            t.add_column(h)
        for row in body:
            t.add_row(*row)
        console.print(t)

    label = " (QUICK preset: a first look, not a benchmark)" if results.get("quick") else ""
    for note in training_notes(results):
        console.print(note.replace("**", ""), markup=False)
    if results.get("rows"):
        show("accuracy" + label, *summary_table_rows(results))
    isa = f" on {cpu_isa_text(results.get('environment', {}))}"
    show("inference speed" + isa + label, *speed_table_rows(results))
    show("training speed" + label, *training_table_rows(results))
    show("ONNX Runtime vs PyTorch", *ratio_table_rows(results))
    show("ONNX exports and parity" + label, *exports_table_rows(results))
    for model in dict.fromkeys(r["model"] for r in results.get("deployment", [])):
        show(f"deployment variants: {model}{isa}{label}", *deployment_table_rows(results, model))
    for model, r in (results.get("recommendation") or {}).get("by_model", {}).items():
        console.print(f"recommended for {model}: {r.get('variant') or r.get('why')}", markup=False)
