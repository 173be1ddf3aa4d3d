"""The run's tables in the terminal (rich), from results.json alone."""

from __future__ import annotations

from bench.report.markdown import training_notes
from bench.report.tables import (
    cpu_isa_text,
    deployment_table_rows,
    exports_table_rows,
    ratio_table_rows,
    speed_table_rows,
    summary_table_rows,
    training_table_rows,
)


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
