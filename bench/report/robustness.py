"""Views of results.json `robustness`: robustness.csv, the report section, its three plots.

Torch-free (numpy, matplotlib): `bench robustness MODEL.onnx` writes them where torch is
not installed.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from bench.report.tables import md_table
from neu import corrupt as C
from neu._io import atomic_path, atomic_write_text

CSV_COLUMNS = [
    "model", "variant", "corruption", "severity", "snr_db", "test_images", "correct",
    "accuracy", "accuracy_ci95_low", "accuracy_ci95_high", "agreement_with_clean", "engine",
]  # fmt: skip
HEATMAP = "robustness_heatmap.png"
SNR_PLOT = "robustness_snr.png"
EXAMPLES = "robustness_examples.png"


def write_csv(out: Path, record: dict) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    w.writeheader()
    w.writerows(record["rows"])
    atomic_write_text(Path(out) / "robustness.csv", buf.getvalue())


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def _cond_label(r: dict) -> str:
    return C.Condition(r["corruption"], r["snr_db"] or r["severity"] or 0).label


def _key_label(key: str) -> str:
    """'snr:db30' -> 'SNR 30 dB', 'jpeg:s3' -> 'jpeg s3'."""
    name, _, level = key.partition(":")
    return C.Condition(name, int(level.lstrip("dbs") or 0)).label


def model_table(record: dict, model: str) -> tuple[list[str], list[list[str]]]:
    """One row per condition, one accuracy column per variant of `model` (fp32 first)."""
    rows = [r for r in record["rows"] if r["model"] == model]
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    conds = list(dict.fromkeys(r["condition"] for r in rows))
    by = {(r["condition"], r["variant"]): r for r in rows}
    head = ["condition"] + [f"{v} accuracy [95% CI]" for v in variants]
    head += [f"{v} agreement with clean" for v in variants]
    body = []
    for c in conds:
        any_row = next(r for r in rows if r["condition"] == c)
        cells = [_cond_label(any_row)]
        for v in variants:
            r = by.get((c, v))
            cells.append(
                "-"
                if r is None
                else f"{_pct(r['accuracy'])} ({r['correct']}/{r['test_images']}) "
                f"[{100 * r['accuracy_ci95_low']:.1f}, {100 * r['accuracy_ci95_high']:.1f}]"
            )
        for v in variants:
            r = by.get((c, v))
            cells.append("-" if r is None or r["agreement_with_clean"] is None
                         else _pct(r["agreement_with_clean"]))  # fmt: skip
        body.append(cells)
    return head, body


def summary_table(record: dict) -> tuple[list[str], list[list[str]]]:
    snrs = [str(db) for db in C.SNR_LEVELS_DB]
    head = ["model", "variant", "clean", "mean over corruptions", "worst condition"]
    head += [f"SNR {db} dB" for db in snrs]
    body = []
    for s in record["summary"]:
        worst = "-" if s["worst_condition"] is None else (
            f"{_key_label(s['worst_condition'])} ({_pct(s['worst_accuracy'])})"
        )  # fmt: skip
        body.append(
            [s["model"], s["variant"], _pct(s["clean_accuracy"]),
             _pct(s["mean_corruption_accuracy"]), worst]
            + [_pct(s["accuracy_at_snr_db"].get(db)) for db in snrs]
        )  # fmt: skip
    body.append(
        ["Song & Yan 2013, AECLBP + SVM (published; other protocol)", "-",
         f"{C.SONG_YAN_AECLBP['clean']:.2f}%", "-", "-"]
        + [f"{C.SONG_YAN_AECLBP[int(db)]:.2f}%" for db in snrs]
    )  # fmt: skip
    return head, body


def markdown(results: dict) -> list[str]:
    """The report's "Robustness" section (empty without a record)."""
    rec = results.get("robustness")
    if results.get("robustness_error") and not rec:
        return ["## Robustness", f"The corruption benchmark failed: {results['robustness_error']}"]
    if not rec or not rec.get("rows"):
        return []
    parts = [
        "## Robustness: accuracy on corrupted test images",
        _protocol(rec),
        md_table(*summary_table(rec)),
        "Song & Yan's row is their published figure (150 train / 150 test images per class, "
        "100 random partitions, hand-crafted features): a reference line, not the same "
        "protocol or test images.",
    ]
    if rec.get("verdict"):
        parts.append(_verdict(rec))
    parts += _plot_links(rec.get("plots") or {})
    for model in dict.fromkeys(r["model"] for r in rec["rows"]):
        parts += [f"### Robustness: {model}", md_table(*model_table(rec, model))]
    if rec.get("skipped"):
        parts.append(
            "Not evaluated under corruption: "
            + "; ".join(f"{s['model']} {s['variant']} ({s['why']})" for s in rec["skipped"])
        )
    return parts


def _protocol(rec: dict) -> str:
    """Which images, how they were corrupted and with which seed, and the step's wall time."""
    return (
        (
            "The split has no test images: these are the validation images, which picked the "
            "checkpoint (optimistic). "
            if rec["images"] != "test"
            else ""
        )
        + f"The {rec['test_images']} held-out {rec['images']} images, corrupted at their "
        f"original resolution before the usual resize and normalisation "
        f"(`--robustness {','.join(rec.get('spec', []) or rec['plan'])}`, seed "
        f"{rec['seed']}; every model and deployment file sees byte-identical corrupted "
        "images). SNR: additive white Gaussian noise whose power is the image's mean squared "
        "pixel value / 10^(dB/10), as in Song & Yan (2013); the other corruptions follow "
        "ImageNet-C's severities 1-5. Deployment variants are evaluated on the SNR levels. "
        f"Wall time of this step: {rec['seconds']:.0f} s."
    )


def _verdict(rec: dict) -> str:
    """The most robust model and the ones the paired test cannot tell from it."""
    v = rec["verdict"]
    best = v["most_robust"]
    tied = [m for m in v["indistinguishable"] if m != best]
    return (
        f"Most robust: **{best}** (mean {_pct(v['mean_degraded_accuracy'][best])} "
        f"over {len(v['conditions'])} corrupted conditions x {rec['test_images']} images). "
        + (
            f"Indistinguishable from it (exact McNemar on the same corrupted images, pooled, "
            f"p >= 0.05): {', '.join(tied)}."
            if tied
            else "Every other model is distinguishable from it (exact McNemar on the same "
            "corrupted images, pooled, p < 0.05)."
        )
        + " The pooled test counts one image several times (once per condition), so its "
        "p-values are optimistic; the per-condition tests are in results.json."
    )


def _plot_links(plots: dict) -> list[str]:
    """The section's pictures, those that were drawn."""
    parts = []
    if plots.get("heatmap"):
        parts.append(f"![accuracy per corruption and severity]({plots['heatmap']})")
    if plots.get("snr"):
        parts.append(f"![accuracy vs SNR with Song & Yan's AECLBP figures]({plots['snr']})")
    if plots.get("examples"):
        parts.append(
            f"What the conditions look like (one test image, severity 3 and each SNR "
            f"level):\n\n![example corrupted images]({plots['examples']})"
        )
    return parts


# --- plots -----------------------------------------------------------------------------------


def _figure(width, height):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def plot_heatmap(rec: dict, path: Path) -> bool:
    rows = [r for r in rec["rows"] if r["variant"] == "fp32" and r["severity"] is not None]
    if not rows:
        return False
    models = list(dict.fromkeys(r["model"] for r in rows))
    corrs = [c for c in C.CORRUPTIONS if any(r["corruption"] == c for r in rows)]
    sevs = sorted({r["severity"] for r in rows})
    fig = _figure(max(5.0, 1.8 + (0.9 * len(sevs) + 0.6) * len(models)), 1.2 + 0.45 * len(corrs))
    for k, m in enumerate(models):
        ax = fig.add_subplot(1, len(models), k + 1)
        grid = np.full((len(corrs), len(sevs)), np.nan)
        for r in rows:
            if r["model"] == m:
                grid[corrs.index(r["corruption"]), sevs.index(r["severity"])] = r["accuracy"]
        ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
        for (i, j), val in np.ndenumerate(grid):
            if not np.isnan(val):
                ax.text(j, i, f"{100 * val:.0f}", ha="center", va="center", fontsize=8)
        ax.set_xticks(range(len(sevs)), [f"s{s}" for s in sevs])
        ax.set_yticks(range(len(corrs)), corrs if k == 0 else [""] * len(corrs))
        ax.set_title(m, fontsize=9)
    fig.suptitle("test accuracy (%), fp32", fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    return True


def plot_snr(rec: dict, path: Path) -> bool:
    rows = [r for r in rec["rows"] if r["corruption"] in ("snr", "clean")]
    if not any(r["corruption"] == "snr" for r in rows):
        return False
    xs = ["clean", *map(str, C.SNR_LEVELS_DB)]
    fig = _figure(6.4, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    for key in dict.fromkeys((r["model"], r["variant"]) for r in rows):
        mine = {("clean" if r["snr_db"] is None else str(r["snr_db"])): r for r in rows
                if (r["model"], r["variant"]) == key}  # fmt: skip
        ys = [100 * mine[x]["accuracy"] if x in mine else np.nan for x in xs]
        ax.plot(range(len(xs)), ys, marker="o", label=f"{key[0]} {key[1]}",
                linestyle="-" if key[1] == "fp32" else "--")  # fmt: skip
    ref = [C.SONG_YAN_AECLBP["clean" if x == "clean" else int(x)] for x in xs]
    ax.plot(range(len(xs)), ref, color="black", linestyle=":", marker="s",
            label="Song & Yan 2013 AECLBP (published, other protocol)")  # fmt: skip
    ax.set_xticks(range(len(xs)), ["clean"] + [f"{x} dB" for x in xs[1:]])
    ax.set_xlabel("signal-to-noise ratio (white Gaussian noise)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 101)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    _save(fig, path)
    return True


def plot_examples(heldout, seed: int, path: Path, index: int = 0) -> bool:
    """One test image under every corruption at severity 3 and every SNR level."""
    conds = [C.CLEAN, *(C.Condition("snr", d) for d in C.SNR_LEVELS_DB)]
    conds += [C.Condition(c, 3) for c in C.CORRUPTIONS]
    px, h = heldout.pixels[index], heldout.hashes[index]
    fig = _figure(1.6 * 6, 1.9 * 2)
    for k, cond in enumerate(conds):
        img = C.corrupt(px, cond, content_hash=h, seed=seed)
        ax = fig.add_subplot(2, 6, k + 1)
        shown = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)
        ax.imshow(shown, cmap="gray", vmin=0, vmax=255)
        ax.set_title(cond.label.replace("_", " "), fontsize=7)
        ax.axis("off")
    fig.suptitle(f"{heldout.files[index]} ({heldout.classes[heldout.labels[index]]})", fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    return True


def write_plots(out: Path, rec: dict, heldout) -> None:
    """Into rec["plots"]; a plot that fails is recorded, never fatal."""
    plots, errors = {}, []
    for kind, name, fn, args in (
        ("heatmap", HEATMAP, plot_heatmap, (rec,)),
        ("snr", SNR_PLOT, plot_snr, (rec,)),
        ("examples", EXAMPLES, plot_examples, (heldout, rec["seed"])),
    ):
        try:
            if fn(*args, Path(out) / name):
                plots[kind] = name
        except Exception as e:
            errors.append(f"robustness {kind}: {type(e).__name__}: {e}")
    rec["plots"] = plots
    if errors:
        rec["plot_errors"] = errors
