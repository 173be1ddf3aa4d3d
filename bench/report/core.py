"""Every file view of a run, written atomically from the results dict: results.json,
results.csv, speed.csv, report.md, report.html (and, on the final write, the plots both
reports embed). Nothing here computes a figure: bench.summary and the steps did."""

from __future__ import annotations

from pathlib import Path

from bench.report.markdown import markdown
from bench.report.tables import ROW_COLUMNS, SPEED_COLUMNS, csv_text
from neu._io import atomic_write_json, atomic_write_text


def write_outputs(out: Path, results: dict, *, final: bool = False) -> None:
    """results.json and every view of it; on the final write also the plots (bench.report.plots)
    that both reports embed, whose paths results.json then records."""
    out = Path(out)
    if final:
        from bench.report.plots import write_plots

        results["plots"] = write_plots(out, results)
    atomic_write_json(out / "results.json", results)
    render(out, results)


def render(out: Path, results: dict) -> None:
    """results.csv, speed.csv, report.md and report.html from the results dict alone (what
    `bench report RUN_DIR` calls): the same dict gives the same bytes."""
    out = Path(out)
    if results.get("rows"):
        atomic_write_text(out / "results.csv", csv_text(results["rows"], ROW_COLUMNS))
    if results.get("speed"):
        atomic_write_text(out / "speed.csv", csv_text(results["speed"], SPEED_COLUMNS))
    md = markdown(results)
    atomic_write_text(out / "report.md", md)
    from bench.report.html import markdown_to_html

    atomic_write_text(out / "report.html", markdown_to_html(md, base=out))
