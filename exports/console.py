"""What the commands print: the per-image results table (rich where it is installed)."""

from __future__ import annotations


def print_table(title: str, results, *, decisions: bool = False) -> int:
    """A rich table where rich is installed; plain tab-separated lines where it is not (a
    deployment needs onnxruntime, numpy and pillow only). Returns how many images failed.
    decisions: a `decision` column (auto|review), for results that carry one (predict's);
    a `note` column appears when any image has warnings (what changed its meaning)."""
    rows = [
        (r["file"], f"error: {r['error']}", "", "", "", True)
        if "error" in r
        else (
            r["file"],
            r["class"],
            f"{r['confidence']:.4f}",
            r.get("decision", ""),
            "; ".join(r.get("warnings", [])),
            False,
        )
        for r in results
    ]
    failed = sum(row[5] for row in rows)
    with_notes = any(row[4] for row in rows)
    header = ["file", "class", "confidence"] + ["decision"] * decisions + ["note"] * with_notes

    def cells(row) -> list[str]:
        return list(row[:3]) + [row[3]] * decisions + [row[4]] * with_notes

    try:
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table
    except ImportError:
        print(title)
        print("\t".join(header))
        for row in rows:
            print("\t".join(cells(row)))
        return failed
    table = Table(title=title)
    table.add_column("file", overflow="fold")  # wrap long paths instead of cutting them
    table.add_column("class", overflow="fold")
    table.add_column("confidence", justify="right", no_wrap=True)
    if decisions:
        table.add_column("decision", no_wrap=True)
    if with_notes:  # what changed an input's meaning on the way to the model
        table.add_column("note", overflow="fold", style="yellow")
    for row in rows:
        table.add_row(*(escape(c) for c in cells(row)), style="red" if row[5] else None)
    Console().print(table)
    return failed
