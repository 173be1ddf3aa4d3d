"""The pictures beside report.md: training curves, confusion heatmaps, latency distributions.

Each function draws from the results data (history.csv, metrics.json, speed rows), writes
one PNG atomically and returns the matplotlib Figure, so tests can inspect what was drawn
(lines, panels, labels) rather than pixels. matplotlib is imported inside the functions and
only its object API with the Agg canvas is used: no pyplot global state, no display needed.
The accuracy-vs-latency Pareto plot lives with the Pareto code in bench.measure.
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

from neu._io import atomic_path

# One colour per model (tab10 order), one line style per seed: a model's seeds stay together.
SEED_STYLES = ("-", "--", ":", "-.")
DPI = 110


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")  # the temp name has no .png suffix
    return path


def plot_training_curves(histories: dict[tuple[str, int], list[dict]], path: str | Path):
    """Train loss, val loss and val accuracy per epoch: one line per (model, seed) per panel.

    histories: {(model, seed): [history.csv rows as dicts]}.
    """
    if not histories:
        raise ValueError("plot_training_curves() got no histories")
    from matplotlib.ticker import MaxNLocator

    fig = _figure(13, 4.4)
    panels = [
        ("train_loss", "train loss", 1.0),
        ("val_loss", "validation loss", 1.0),
        ("val_accuracy", "validation accuracy (%)", 100.0),
    ]
    axes = fig.subplots(1, len(panels))
    models = list(dict.fromkeys(m for m, _ in histories))
    seeds = sorted({s for _, s in histories})
    for ax, (field, title, scale) in zip(axes, panels, strict=True):
        for (model, seed), history in histories.items():
            epochs = [int(h["epoch"]) for h in history]
            values = [float(h[field]) * scale for h in history]
            ax.plot(
                epochs,
                values,
                SEED_STYLES[seeds.index(seed) % len(SEED_STYLES)],
                marker="o",
                markersize=3,
                color=f"C{models.index(model) % 10}",
                label=f"{model} seed {seed}",
            )
        values = [v for line in ax.get_lines() for v in line.get_ydata()]
        if scale == 1.0 and min(values) > 0 and max(values) / min(values) > 10:
            # One diverging model (VGG from scratch reaches val loss 1e3) would flatten
            # every other curve on a linear axis.
            ax.set_yscale("log")
            title += " (log scale)"
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
    axes[2].set_ylim(top=100.5)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=8)
    rows = math.ceil(len(labels) / 4)
    fig.tight_layout(rect=(0, 0.05 + 0.045 * rows, 1, 1))
    _save(fig, path)
    return fig


def plot_confusion(cm: list[list[int]], classes: list[str], path: str | Path, *, title: str):
    """Heatmap of a confusion matrix: colour = share of the true class (row), text = count."""
    import numpy as np

    counts = np.asarray(cm, dtype=np.int64)
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig = _figure(5.4, 4.7)
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    n = len(classes)
    ax.set_xticks(range(n), classes, rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(n), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    for i in range(n):
        for j in range(n):
            if counts[i, j]:
                dark = share[i, j] > 0.55
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if dark else "black")  # fmt: skip
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    fig.tight_layout()
    _save(fig, path)
    return fig


def plot_latency_distribution(rows: list[dict], path: str | Path, *, batch_size: int = 1):
    """Box plot of the kept latency samples of every runtime at `batch_size`, one box per row.

    Box p25-p75, line p50, whiskers p1-p99, dots beyond them: drawn from the samples each
    speed row keeps (`latency_ms_samples`: all of them, or up to 1,000 evenly strided).
    """
    from bench.measure.pareto import log_x_when_wide, row_label

    rows = _rows_with_samples(rows, batch_size)
    fig = _figure(9, 1.4 + 0.42 * len(rows))
    ax = fig.add_subplot()
    data = [r["latency_ms_samples"] for r in rows]
    labels = [f"{row_label(r)} (n={r['n']})" for r in rows]
    ax.boxplot(
        data,
        **_horizontal(),
        whis=(1, 99),
        widths=0.6,
        flierprops={"marker": ".", "markersize": 3, "alpha": 0.5},
        medianprops={"color": "tab:red"},
    )
    ax.set_yticks(range(1, len(rows) + 1), labels, fontsize=8)
    ax.invert_yaxis()  # first row on top, as in the tables
    log_x_when_wide(ax, min(min(d) for d in data), max(max(d) for d in data))
    ax.set_xlabel(f"batch-{batch_size} latency (ms, lower is better)")
    ax.set_title(
        f"Latency distribution per runtime, batch {batch_size}\n"
        "box p25-p75, red line p50, whiskers p1-p99, dots beyond",
        fontsize=10,
    )
    ax.grid(True, axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    _save(fig, path)
    return fig


def _rows_with_samples(rows: list[dict], batch_size: int) -> list[dict]:
    """The inference rows at `batch_size` that kept samples, sorted by label; ValueError if none.
    A max-batch row is left out even when the largest batch that fitted is `batch_size`: it
    would repeat that runtime's box."""
    from bench.measure.pareto import row_label

    rows = [
        r
        for r in rows
        if r.get("phase") != "train"
        and r.get("batch_size") == batch_size
        and not r.get("max_batch")
        and r.get("latency_ms_samples")
    ]
    if not rows:
        raise ValueError(f"no batch-{batch_size} speed rows with latency samples to plot")
    return sorted(rows, key=row_label)


def _horizontal() -> dict:
    """boxplot's keyword for horizontal boxes: matplotlib 3.10 renamed vert=False to
    orientation="horizontal" (and deprecates vert)."""
    import matplotlib

    major, minor = (int(p) for p in matplotlib.__version__.split(".")[:2])
    return {"orientation": "horizontal"} if (major, minor) >= (3, 10) else {"vert": False}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def read_history(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_plots(out: Path, results: dict) -> dict:
    """Every plot the results allow, beside report.md. Returns {kind: file name(s)}.

    A plot that fails is reported under "errors" and the others are still drawn: pictures
    must never cost the run its numbers.
    """
    import json

    out = Path(out)
    plots: dict = {"confusion": {}, "errors": []}

    histories = {}
    for r in results.get("rows", []):
        path = out / r["model"] / f"seed{r['seed']}" / "history.csv"
        if path.exists():
            histories[(r["model"], r["seed"])] = read_history(path)
    histories = {k: v for k, v in histories.items() if v}

    def attempt(kind, fn, *args, **kwargs) -> bool:
        try:
            fn(*args, **kwargs)
            return True
        except Exception as e:
            plots["errors"].append(f"{kind}: {type(e).__name__}: {e}")
            return False

    if histories and attempt(
        "training curves", plot_training_curves, histories, out / "training_curves.png"
    ):
        plots["training_curves"] = "training_curves.png"

    for r in results.get("rows", []):
        metrics = out / r["model"] / f"seed{r['seed']}" / "metrics.json"
        if r.get("status") != "ok" or not metrics.exists():
            continue
        key = f"{r['model']} seed {r['seed']}"  # the key of results["evaluation"]
        name = f"confusion_{_slug(r['model'])}_seed{r['seed']}.png"
        m = json.loads(metrics.read_text())
        # metrics.json holds the headline split's matrix: test, or val without a test split.
        split = "test" if r.get("accuracy_split") == "test" else "validation"
        acc = r.get("test_accuracy") if split == "test" else r.get("val_accuracy")
        title = f"{key}: {split} confusion matrix" + (
            f" (accuracy {100 * acc:.1f}%)" if acc is not None else ""
        )
        cm, classes = m["confusion_matrix"], m["classes"]
        if attempt(f"confusion {key}", plot_confusion, cm, classes, out / name, title=title):
            plots["confusion"][key] = name

    speed_rows = results.get("speed", [])
    if any(r.get("latency_ms_samples") and r.get("batch_size") == 1 for r in speed_rows):
        path = out / "latency_distribution.png"
        if attempt("latency distribution", plot_latency_distribution, speed_rows, path):
            plots["latency"] = "latency_distribution.png"
    return plots
