"""Views of the results dict: results.json, results.csv, report.md and rich tables.

The data is the dict; everything here only formats it, so every view shows the same numbers.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from bench import metrics as M
from bench.speed.placement import placement_note
from neu._io import atomic_write_json, atomic_write_text

ROW_COLUMNS = [
    "model",
    "seed",
    "status",
    "error",
    "weights",
    "amp",
    "amp_reason",
    "val_accuracy",
    "val_accuracy_ci95_low",
    "val_accuracy_ci95_high",
    "macro_f1",
    "val_loss",
    "test_accuracy",
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


def summarize_models(rows: list[dict]) -> list[dict]:
    """One entry per model over its seeds: accuracy mean, std and a 95% interval.

    One seed: Clopper-Pearson interval of that accuracy (binomial over validation images).
    Several: Student-t interval of the mean over seeds (seed-to-seed variation).
    """
    order = list(dict.fromkeys(r["model"] for r in rows))
    out = []
    for name in order:
        mine = [r for r in rows if r["model"] == name]
        ok = [r for r in mine if r["status"] == "ok"]
        entry = {
            "model": name,
            "seeds": len(mine),
            "failed": len(mine) - len(ok),
            "weights": mine[0].get("weights"),
            "amp": mine[0].get("amp"),
            "val_accuracy_mean": None,
            "val_accuracy_std": None,
            "val_accuracy_ci95": None,
            "ci_method": None,
            "macro_f1_mean": None,
            "train_seconds_mean": None,
            "params_m": mine[0].get("params_m"),
            "gflops": mine[0].get("gflops"),
        }
        if ok:
            accs = [r["val_accuracy"] for r in ok]
            stats = M.mean_ci(accs)
            if len(ok) == 1:
                ci = [ok[0]["val_accuracy_ci95_low"], ok[0]["val_accuracy_ci95_high"]]
                method = f"Clopper-Pearson 95% (n={ok[0]['val_images']} images)"
            else:
                ci, method = stats["ci95"], f"Student-t 95% over {len(ok)} seeds"
            entry.update(
                val_accuracy_mean=stats["mean"],
                val_accuracy_std=stats["std"],
                val_accuracy_ci95=ci,
                ci_method=method,
                macro_f1_mean=sum(r["macro_f1"] for r in ok) / len(ok),
                train_seconds_mean=sum(r["train_seconds"] for r in ok) / len(ok),
                pipeline_efficiency_mean=sum(r["pipeline_efficiency"] for r in ok) / len(ok),
                train_img_s_mean=sum(r["train_img_s"] for r in ok) / len(ok),
            )
        out.append(entry)
    return out


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def cpu_isa_text(env: dict) -> str:
    """'ISA AVX2 (torch AVX2)': what the speed figures were measured with."""
    isa = env.get("cpu_isa") or {}
    label = env.get("cpu_isa_label") or "unknown"
    cap = isa.get("torch_capability")
    return f"ISA {label}" + (f" (torch {cap})" if cap else "")


def _num(v, fmt=".2f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, fmt)


def _acc_cell(s: dict) -> str:
    if s["val_accuracy_mean"] is None:
        return "failed"
    lo, hi = s["val_accuracy_ci95"] or (None, None)
    text = _pct(s["val_accuracy_mean"])
    if s["seeds"] - s["failed"] > 1:
        text += f" ± {100 * s['val_accuracy_std']:.2f}"
    if lo is not None:
        text += f" [{100 * lo:.1f}, {100 * hi:.1f}]"
    return text


def summary_table_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    head = [
        "model",
        "weights",
        "precision",
        "params (M)",
        "GFLOPs",
        "val acc [95% CI]",
        "macro-F1",
        "ckpt MB",
        "ONNX MB",
        "train time",
        "train img/s",
        "pipeline eff.",
        "seeds",
    ]
    body = []
    info = results.get("models", {})
    for s in summarize_models(results["rows"]):
        body.append(
            [
                s["model"],
                str(s["weights"]),
                s.get("amp") or "-",
                _num(s["params_m"], ".1f"),
                _num(s["gflops"], ".2f"),
                _acc_cell(s),
                _num(s["macro_f1_mean"], ".4f"),
                _num(info.get(s["model"], {}).get("checkpoint_size_mb"), ".1f"),
                _num(info.get(s["model"], {}).get("onnx_size_mb"), ".1f"),
                "-" if s["train_seconds_mean"] is None else f"{s['train_seconds_mean']:.0f} s",
                _num(s.get("train_img_s_mean"), ".1f"),
                _num(s.get("pipeline_efficiency_mean"), ".2f"),
                f"{s['seeds'] - s['failed']}/{s['seeds']}",
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
            "> **QUICK PRESET**: a stratified subset, small images, few epochs. A first look, "
            "not a benchmark result."
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
        parts += ["## Accuracy", _md_table(*summary_table_rows(results))]
        methods = {s["ci_method"] for s in summarize_models(results["rows"]) if s["ci_method"]}
        if methods:
            parts.append("Intervals: " + "; ".join(sorted(methods)) + ".")
        parts += [
            "### Per model and seed",
            _md_table(
                ROW_COLUMNS, [[_cell(r.get(c)) for c in ROW_COLUMNS] for r in results["rows"]]
            ),
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
        parts += [
            f"### Confusion matrix and per-class scores: {name}",
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
    if results.get("plot"):
        parts += ["## Accuracy vs latency", f"![accuracy vs batch-1 latency]({results['plot']})"]
    if results.get("exports"):
        parts += [
            "## ONNX exports and parity",
            "Every validation image through PyTorch and ONNX Runtime at batch 1 and 32; passes "
            "when every top-1 agrees and max |Δ logits| is within the tolerance.",
            _md_table(*exports_table_rows(results)),
        ]
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
        notes.append(
            f"Sweep wall time (this invocation): expected {_minutes(sw.get('train_seconds_expected'))}"
            f" of training ({sw.get('expected_from', 'no estimate: too few batches')}); actual "
            f"{_minutes(sw.get('train_seconds_actual'))} of training (with per-epoch "
            f"evaluation), {_minutes(sw.get('seconds_actual'))} for the whole command."
        )
    return notes


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def csv_text(rows: list[dict], columns: list[str]) -> str:
    buf = io.StringIO()
    extra = sorted({k for r in rows for k in r} - set(columns))
    w = csv.DictWriter(buf, fieldnames=columns + extra, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def write_outputs(out: Path, results: dict, *, final: bool = False) -> None:
    """results.json, results.csv (+ speed.csv) and report.md, each written atomically."""
    out = Path(out)
    if final and results.get("rows"):
        results["summary"] = summarize_models(results["rows"])
        results["evaluation"] = _evaluations(out, results)
    atomic_write_json(out / "results.json", results)
    if results.get("rows"):
        atomic_write_text(out / "results.csv", csv_text(results["rows"], ROW_COLUMNS))
    if results.get("speed"):
        atomic_write_text(out / "speed.csv", csv_text(results["speed"], SPEED_COLUMNS))
    atomic_write_text(out / "report.md", markdown(results))


MISCLASSIFIED_SHOWN = 20


def _evaluations(out: Path, results: dict) -> dict:
    """Per model and seed: confusion matrix, per-class scores, the misclassified files."""
    import json

    evals = {}
    for r in results["rows"]:
        path = out / r["model"] / f"seed{r['seed']}" / "metrics.json"
        if r["status"] == "ok" and path.exists():
            m = json.loads(path.read_text())
            evals[f"{r['model']} seed {r['seed']}"] = {
                "confusion_matrix": m["confusion_matrix"],
                "per_class": m["per_class"],
                "misclassified_count": len(m["misclassified"]),
                "misclassified": m["misclassified"][:MISCLASSIFIED_SHOWN],
                "metrics_file": str(path.relative_to(out)),
            }
    return evals


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
