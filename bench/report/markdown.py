"""report.md, section by section, from results.json alone (report.html is rendered from it)."""

from __future__ import annotations

from bench.report.tables import (
    ROW_COLUMNS,
    cell,
    comparison_matrix,
    cpu_isa_text,
    deployment_table_rows,
    exports_table_rows,
    md_table,
    num,
    pct,
    ratio_table_rows,
    speed_table_rows,
    summary_table_rows,
    training_table_rows,
)
from bench.summary import ALPHA, OPTIMISTIC, headline_split


def markdown(results: dict) -> str:
    """report.md: one section after another, each from its own keys of results.json."""
    from bench.report.calibration import markdown as calibration_markdown
    from bench.report.robustness import markdown as robustness_markdown

    parts = header_section(results) + accuracy_section(results) + evaluation_section(results)
    parts += calibration_markdown(results)
    parts += speed_section(results) + deployment_markdown(results)
    parts += robustness_markdown(results) + exports_section(results)
    plots = results.get("plots") or {}
    errors = list(plots.get("errors") or []) + list(results.get("plot_errors") or [])
    if errors:
        parts.append("Plots that could not be drawn: " + "; ".join(errors))
    return "\n\n".join(parts) + "\n"


def deployment_markdown(results: dict) -> list[str]:
    """The deployment variants per model, the recommendation, the Pareto front and INT8."""
    rows = results.get("deployment") or []
    if not rows:
        return []
    parts = ["## Deployment variants", _deployment_method(results)]
    for model in dict.fromkeys(r["model"] for r in rows):
        parts += [f"### {model}", md_table(*deployment_table_rows(results, model))]
    rec = results.get("recommendation") or {}
    env = results.get("environment", {})
    lines = [_recommendation_line(m, r, env) for m, r in (rec.get("by_model") or {}).items()]
    if lines:
        parts += ["### Recommendation: the fastest variant that passed fidelity", "\n".join(lines)]
    if rec.get("pareto"):
        front = ", ".join(
            f"{p['model']}/{p['variant']} ({num(p['latency_ms_p50'])} ms, "
            f"{pct(p['test_accuracy'])})"
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


def _deployment_method(results: dict) -> str:
    """Where and how the variants were timed and judged, read before their tables."""
    env = results.get("environment", {})
    first = results["deployment"][0]
    return (
        f"Measured on {env.get('cpu', '?')} ({cpu_isa_text(env)}), "
        f"{first.get('threads') or env.get('torch_threads')} threads. Every variant is timed "
        "at batch 1 in the same interleaved rounds as torch eager FP32 ('vs torch FP32' is "
        "the median of the per-round p50 ratios, >1: faster), then at batch 32 in a second "
        "window (INT8 candidates: the fastest two only). Fidelity: every "
        f"{first['fidelity_source']} image ({first['fidelity_images']}) through the variant, "
        "compared with torch eager FP32. FP32 variants need strict parity; reduced precision "
        "passes on the accuracy delta and top-1 agreement. A variant that fails is never "
        "recommended."
    )


def _recommendation_line(model: str, r: dict, env: dict) -> str:
    """One model's recommended variant as a list item, or why it has none."""
    if not r.get("variant"):
        return f"- **{model}**: {r.get('recommendation') or 'none'} ({r.get('why')})"
    speedup = r.get("speedup_vs_torch_fp32")
    return (
        f"- **{model}**: `{r['variant']}` ({r['runtime']}/{r['provider']}, {r['precision']}), "
        f"p50 {num(r['latency_ms_p50'])} ms at batch 1"
        + ("" if speedup is None else f", {speedup:.2f}x torch eager FP32")
        + f", agreement {pct(r.get('agreement'))}"
        + (
            ""
            if r.get("accuracy_delta_pp") is None
            else f", accuracy {r['accuracy_delta_pp']:+.2f} pp"
        )  # fmt: skip
        + f" ({cpu_isa_text(env)})"
    )


def header_section(results: dict) -> list[str]:
    """Title, machine, data, split, recipe and how training went."""
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
    return parts


def accuracy_section(results: dict) -> list[str]:
    """The headline accuracies with their intervals, the McNemar ties and every run's row."""
    if not results.get("rows"):
        return []
    parts = []
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
    parts.append(md_table(*summary_table_rows(results)))
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
            md_table(*comparison_matrix(results["comparisons"])),
        ]
    parts += [
        "### Per model, seed and fold",
        md_table(ROW_COLUMNS, [[cell(r.get(c)) for c in ROW_COLUMNS] for r in results["rows"]]),
    ]
    return parts


def evaluation_section(results: dict) -> list[str]:
    """Training curves, then each model's confusion matrix, per-class scores and misclassified files."""
    parts = []
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
            md_table(head, cm_rows),
            md_table(["class", "precision", "recall", "F1", "support"], pc_rows),
        ]
        if ev["misclassified_count"]:
            shown = ev["misclassified"]
            parts.append(
                f"Misclassified: {ev['misclassified_count']} (first {len(shown)} below; all in "
                f"`{ev['metrics_file']}`)"
            )
            parts.append(
                md_table(
                    ["file", "true", "predicted", "confidence"],
                    [
                        [m["file"], m["true"], m["predicted"], f"{m['confidence']:.3f}"]
                        for m in shown
                    ],
                )
            )
    return parts


def speed_section(results: dict) -> list[str]:
    """Latency and throughput rows, their distribution, training speed, ORT vs torch."""
    if not results.get("speed"):
        return []
    env = results.get("environment", {})
    plots = results.get("plots") or {}
    parts = []
    parts += [
        "## Speed",
        f"On {env.get('cpu', '?')} ({cpu_isa_text(env)}). "
        "Latency of the model alone (inputs prepared before the clock), warm-up first, "
        "then at least the configured seconds and iterations; percentiles over all samples. "
        "Runtimes alternate over the rounds; p50/p90/p99 are medians over rounds, and "
        "the spread is (max - min) / min of the rounds' p50s.",
        md_table(*speed_table_rows(results)),
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
            md_table(train_head, train_body),
        ]
    if results.get("speed_ratios"):
        parts += [
            "### ONNX Runtime vs PyTorch (CPU, same threads)",
            md_table(*ratio_table_rows(results)),
        ]
    return parts


def exports_section(results: dict) -> list[str]:
    """The accuracy-vs-latency plot, the ONNX exports with their parity, and serving."""
    parts = []
    if results.get("plot"):
        parts += ["## Accuracy vs latency", f"![accuracy vs batch-1 latency]({results['plot']})"]
    if results.get("exports"):
        parts += [
            "## ONNX exports and parity",
            f"Every {'test' if headline_split(results['rows']) == 'test' else 'validation'} "
            "image through PyTorch and ONNX Runtime at batch 1 and 32; passes when every "
            "top-1 agrees and max |Δ logits| is within the tolerance.",
            md_table(*exports_table_rows(results)),
        ]
        from bench.report.serving import serving_markdown

        parts += serving_markdown(results)
    return parts


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
        kept = sw.get("speed_models_kept") or []
        phases.append(
            f"{_minutes(sw['speed_seconds_actual'])} of speed and deployment variants"
            + (f" (the rows of {', '.join(kept)} kept from an earlier invocation)" if kept else "")
        )
    if sw.get("robustness_seconds_actual") is not None:
        phases.append(f"{_minutes(sw['robustness_seconds_actual'])} of the corruption benchmark")
    if sw.get("calibration_seconds_actual") is not None:
        phases.append(f"{_minutes(sw['calibration_seconds_actual'])} of calibration and Grad-CAM")
    if sw.get("export_seconds_actual") is not None:
        phases.append(f"{_minutes(sw['export_seconds_actual'])} of export and parity")
    return (
        f"Sweep wall time (this invocation): {expected}. Actual: {', '.join(phases)}; "
        f"{_minutes(sw.get('seconds_actual'))} for the whole command."
    )
