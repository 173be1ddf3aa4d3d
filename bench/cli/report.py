"""`python -m bench report RUN_DIR`: re-render a finished run's views from its results.json.

Writes results.csv, speed.csv, report.md and report.html exactly as `bench run` wrote them,
from results.json alone: no torch, no ONNX Runtime, nothing re-measured. The figures already
in the folder are linked (and embedded in report.html); `--plots` draws them again from the
run folder's files (history.csv, metrics.json) and records them in results.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a run folder written by `bench run` or `bench speed`")
    p.add_argument("--plots", action=argparse.BooleanOptionalAction, default=False,
                   help="also draw the figures again (needs matplotlib and the run's "
                   "history.csv/metrics.json files); default: keep the ones there")  # fmt: skip


def load_results(run_dir: Path) -> dict:
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        raise ValueError(
            f"{run_dir}: no results.json there; pass the folder `bench run --out` wrote"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); re-run the command that wrote it") from e


def report_command(run_dir: str | Path, *, plots: bool = False) -> list[Path]:
    """The files written, in order."""
    from bench.report.core import render, write_outputs

    run_dir = Path(run_dir)
    results = load_results(run_dir)
    if plots:
        write_outputs(run_dir, results, final=True)
        return [run_dir / "results.json", *render_paths(run_dir, results)]
    render(run_dir, results)
    return render_paths(run_dir, results)


def render_paths(run_dir: Path, results: dict) -> list[Path]:
    names = ["results.csv"] if results.get("rows") else []
    names += ["speed.csv"] if results.get("speed") else []
    return [run_dir / n for n in (*names, "report.md", "report.html")]
