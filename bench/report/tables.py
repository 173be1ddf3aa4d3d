"""The run's tables as (header, rows) of strings, from results.json alone: the one formatting
of every figure that Markdown, HTML, CSV and the console show."""

from __future__ import annotations

import csv
import io
import math

from bench.summary import ALPHA, headline_split

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


def placement_note(row: dict) -> str:
    """'' when every node ran on the row's provider, else e.g. '3 of 120 nodes on cpu'."""
    nodes = row.get("nodes_by_provider") or {}
    total = sum(nodes.values())
    elsewhere = {p: n for p, n in nodes.items() if p != row.get("provider")}
    if not elsewhere:
        return ""
    return ", ".join(f"{n} of {total} nodes on {p}" for p, n in elsewhere.items())


def pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def cpu_isa_text(env: dict) -> str:
    """'ISA AVX2 (torch AVX2)': what the speed figures were measured with."""
    isa = env.get("cpu_isa") or {}
    label = env.get("cpu_isa_label") or "unknown"
    cap = isa.get("torch_capability")
    cls = env.get("cpu_isa_class")
    return f"ISA {label}" + (f" (torch {cap})" if cap else "") + (f", class {cls}" if cls else "")


def num(v, fmt=".2f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, fmt)


def _acc_cell(s: dict) -> str:
    if s["accuracy_mean"] is None:
        return "failed"
    lo, hi = s["accuracy_ci95"] or (None, None)
    text = pct(s["accuracy_mean"])
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
    return f"{pct(s['fold_accuracy_mean'])} ± {100 * s['fold_accuracy_std']:.2f}"


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
                num(s["params_m"], ".1f"),
                num(s["gflops"], ".2f"),
                _acc_cell(s),
                _vs_best_cell(s),
                _fold_cell(s),
                num(s["macro_f1_mean"], ".4f"),
                num(info.get(s["model"], {}).get("checkpoint_size_mb"), ".1f"),
                num(info.get(s["model"], {}).get("onnx_size_mb"), ".1f"),
                "-" if s["train_seconds_mean"] is None else f"{s['train_seconds_mean']:.0f} s",
                num(s.get("train_img_s_mean"), ".1f"),
                num(s.get("pipeline_efficiency_mean"), ".2f"),
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
                num(r["latency_ms_p50"]),
                num(r["latency_ms_p90"]),
                num(r["latency_ms_p99"]),
                num(r["throughput_img_s"], ".1f"),
                str(r["n"]),
                str(r.get("rounds", 1)),
                num(r.get("p50_spread_pct"), ".1f"),
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
            num(r["train_img_s"], ".1f")
            + (" (epoch 1)" if r["train_img_s_includes_first_epoch"] else ""),
            num(r.get("data_ms_per_step"), ".1f"),
            num(r.get("compute_ms_per_step"), ".1f"),
            num(r.get("pipeline_efficiency"), ".2f"),
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
        body.append([r["model"]] + [num(v) for v in vals])
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
                num(e.get("size_mb"), ".1f"),
                str(e.get("provider", "-")),
                str(e.get("n_images", "-")),
                num(e.get("max_abs_diff"), ".2e"),
                num(e.get("max_rel_diff"), ".2e"),
                str(e.get("top1_disagreements", "-")),
                pct(e.get("torch_accuracy")),
                pct(e.get("onnx_accuracy")),
                "PASS" if e.get("parity_passed") else f"FAIL {e.get('error') or ''}".strip(),
            ]
        )
    return head, body


DEPLOYMENT_COLUMNS = [
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


def deployment_table_rows(results: dict, model: str) -> tuple[list[str], list[list[str]]]:
    """One model's deployment variants: speed (same rounds), size and fidelity."""
    body = []
    for r in results.get("deployment", []):
        if r["model"] != model:
            continue
        if r.get("skipped"):
            body.append([r["variant"], r["runtime"], r["precision"]] + ["-"] * 9
                        + [f"skipped: {r['skipped']}"])  # fmt: skip
            continue
        speedup = r.get("speedup_vs_torch_fp32")
        variant = r["variant"]
        if r.get("candidate") and variant == "ort_int8":
            variant += f" ({r['candidate']}, chosen)"
        delta = r.get("accuracy_delta_pp")
        body.append(
            [
                variant,
                f"{r['runtime']} / {r.get('provider') or '-'}",
                r["precision"],
                num(r.get("latency_ms_p50")),
                num(r.get("latency_ms_p99")),
                num(r.get("throughput_img_s"), ".1f"),
                "-" if speedup is None else f"{speedup:.2f}x",
                num(r.get("size_mb"), ".1f"),
                pct(r.get("agreement")),
                pct(r.get("test_accuracy")),
                "-" if delta is None else f"{delta:+.2f}",
                num(r.get("max_abs_logit_diff"), ".2e"),
                _fidelity_cell(r),
            ]
        )
    return list(DEPLOYMENT_COLUMNS), body


def _fidelity_cell(r: dict) -> str:
    """PASS, FAIL with the failed checks, the reason it was not judged, or the error; then
    any compile time, which the latency columns leave out."""
    verdict = "PASS" if r.get("passed") else "FAIL " + "; ".join(r.get("fidelity_failures") or [])
    if r.get("passed") is None and r.get("fidelity"):
        verdict = r["fidelity"]  # "not judged (random weights)": never PASS
    if r.get("error"):
        verdict = f"error: {r['error']}"
    if r.get("compile_seconds_by_batch"):
        secs = ", ".join(f"b{b}: {v:.1f} s" for b, v in r["compile_seconds_by_batch"].items())
        verdict += f" (compile {secs}, not in latency)"
    return verdict.strip()


def md_table(head: list[str], body: list[list[str]]) -> str:
    def esc(c):
        return str(c).replace("|", "\\|")

    lines = ["| " + " | ".join(map(esc, head)) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(map(esc, row)) + " |" for row in body]
    return "\n".join(lines)


def cell(v) -> str:
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
