"""The accuracy/latency Pareto front and its plot."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of (latency, accuracy) points no other point beats, sorted by latency.

    Lower latency and higher accuracy are better. A point is dominated when another is at
    least as good on both and strictly better on one; exact duplicates therefore both stay
    on the front. Points with a NaN coordinate are never on it.
    """
    ok = [i for i, (lat, acc) in enumerate(points) if not (math.isnan(lat) or math.isnan(acc))]
    front = []
    for i in ok:
        li, ai = points[i]
        dominated = any(
            points[j][0] <= li and points[j][1] >= ai and (points[j][0] < li or points[j][1] > ai)
            for j in ok
            if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], -points[i][1], i))


def row_label(row: dict) -> str:
    """How every plot names a speed row. A deployment variant by its name: a CPU run has
    several torch fp32 rows (eager, channels_last, compiled) that runtime/provider/precision
    cannot tell apart. Other rows by runtime/provider, precision unless fp32, CL for
    channels_last."""
    if row.get("variant"):
        return f"{row['model']} · {row['variant']}"
    label = f"{row['model']} · {row['runtime']}/{row['provider']}"
    if row.get("precision", "fp32") != "fp32":
        label += f" {row['precision']}"
    if row.get("channels_last"):
        label += " CL"
    return label


def plot_accuracy_vs_latency(
    rows: Sequence[dict],
    path: str | Path,
    *,
    title: str | None = None,
    ylabel: str = "validation accuracy (%, higher is better)",
) -> Path:
    """Accuracy vs p50 latency scatter, one labelled point per row, Pareto front marked.

    rows: dicts with model, runtime, provider, latency_ms_p50, accuracy (a fraction in
    [0, 1], whichever split the ylabel names; plotted in %; values > 1 are taken as already in %),
    optionally variant, precision and batch_size. Pass one row per model & runtime or variant
    (normally the batch-1 rows); duplicate labels raise ValueError. Written atomically as PNG.
    Uses matplotlib's object API with the Agg canvas, so pyplot's global state is untouched.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from neu._io import atomic_path

    labels, lats, accs = _points(rows)
    fig = Figure(figsize=(8, 5.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    _draw_points(ax, labels, lats, accs)
    log_x_when_wide(ax, min(lats), max(lats))
    ax.set_xlabel("latency p50 (ms, lower is better)")
    ax.set_ylabel(ylabel)
    ax.set_title(title or "NEU-CLS: accuracy vs latency (batch 1)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()

    path = Path(path)
    with atomic_path(path) as tmp:
        # The temp file has no .png suffix, so name the format explicitly.
        fig.savefig(tmp, format="png")
    return path


def _points(rows: Sequence[dict]) -> tuple[list[str], list[float], list[float]]:
    """Each row's label, p50 latency and accuracy in %; ValueError when none or a label repeats."""
    if not rows:
        raise ValueError("plot_accuracy_vs_latency() got no rows to plot")
    labels, lats, accs = [], [], []
    for r in rows:
        labels.append(row_label(r))
        lats.append(float(r["latency_ms_p50"]))
        accs.append(float(r["accuracy"]))
    dupes = sorted({lab for lab in labels if labels.count(lab) > 1})
    if dupes:
        raise ValueError(f"one row per model & runtime expected; duplicated: {dupes}")
    if max(accs) <= 1.0:
        accs = [a * 100 for a in accs]
    return labels, lats, accs


def _draw_points(ax, labels: list[str], lats: list[float], accs: list[float]) -> None:
    """Every point, the Pareto front through the ones it keeps, and a label per point."""
    front = pareto_front(list(zip(lats, accs, strict=True)))
    ax.scatter(lats, accs, s=30, color="tab:blue", zorder=2, label="model & runtime")
    ax.plot(
        [lats[i] for i in front],
        [accs[i] for i in front],
        "-o",
        color="tab:red",
        markersize=9,
        markerfacecolor="none",
        markeredgewidth=1.8,
        zorder=3,
        label="Pareto front",
    )
    # Points at the same accuracy (common on small validation sets) get their labels
    # stacked instead of printed on top of each other.
    seen: dict[float, int] = {}
    for lab, x, y in zip(labels, lats, accs, strict=True):
        k = seen[round(y, 6)] = seen.get(round(y, 6), -1) + 1
        ax.annotate(lab, (x, y), xytext=(4, 4 + 9 * k), textcoords="offset points", fontsize=7)


def log_x_when_wide(ax, lo: float, hi: float) -> None:
    """A log latency axis when the latencies span more than 20x: across runtimes and
    GPUs/CPUs they easily span 10x-100x, which a linear axis crushes into its left edge."""
    if lo > 0 and hi / lo > 20:
        from matplotlib.ticker import LogFormatter

        ax.set_xscale("log")
        # Plain numbers (0.5, 2, 20 ms), not 2x10^1 mathtext.
        ax.xaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
        ax.xaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
