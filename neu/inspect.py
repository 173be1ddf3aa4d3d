"""The report behind `python -m neu inspect`: what is in a folder, and is it usable?"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from neu.dataset import load_dataset
from neu.layout import FIX, DatasetError


def inspect_dataset(
    root: str | Path,
    *,
    layout: str = "auto",
    exclude_bad: bool = False,
    image_size: int = 200,
    cache_dir: str | Path | bool | None = None,
) -> dict:
    """Everything `python -m neu inspect` shows, as one JSON-able dict; `usable` says whether
    load_dataset would succeed with these options."""
    report: dict = {"root": str(root), "layout": layout, "usable": False, "num_images": 0}
    try:
        ds = load_dataset(
            root, image_size=image_size, layout=layout, exclude_bad=True, cache_dir=cache_dir
        )
    except DatasetError as e:
        report.update(
            error=str(e),
            classes={},
            duplicates=[],
            problems=[vars(p) for p in e.problems],
            ignored=[],
            excluded=[],
        )
        return report
    found = [vars(p) for p in ds.excluded]
    report.update(
        layout=ds.layout,
        usable=exclude_bad or not found,
        num_images=len(ds),
        num_classes=len(ds.classes),
        classes=ds.class_counts(),
        channels=ds.channels,
        image_size=ds.image_size,
        sizes=ds.original_sizes,
        modes=ds.modes,
        bit_depths={str(k): v for k, v in ds.bit_depths.items()},
        mixed_bit_depths=len(ds.bit_depths) > 1,
        duplicates=ds.duplicates,
        problems=[] if exclude_bad else found,
        excluded=found if exclude_bad else [],
        ignored=ds.ignored,
        dataset_hash=ds.dataset_hash,
    )
    if ds.layout_split is not None:
        report["layout_split"] = dict(Counter(ds.layout_split))
    if not exclude_bad and found:
        report["error"] = str(DatasetError(f"{len(found)} problem(s) in {ds.root}", ds.excluded))
    return report


def print_inspect(report: dict) -> None:
    """Rich tables for an inspect report; problems go to stderr."""
    from rich.console import Console

    out, err = Console(), Console(stderr=True)
    out.print(f"[bold]{report['root']}[/bold]  layout: [cyan]{report['layout']}[/cyan]")
    if report.get("classes"):
        _print_contents(out, report)
    if report["ignored"]:
        out.print(f"ignored companion files: {', '.join(report['ignored'])}")
    if report["excluded"]:
        out.print(
            _problem_table(
                f"excluded ({len(report['excluded'])}, --exclude-bad)", report["excluded"]
            )
        )
    if report["problems"]:
        err.print(
            _problem_table(f"[red]problems ({len(report['problems'])})[/red]", report["problems"])
        )
    _print_verdict(out, err, report)


def _print_contents(out, report: dict) -> None:
    """Classes and counts, sizes, modes, bit depths, duplicates and the dataset hash."""
    from rich.table import Table

    t = Table(title=f"{report['num_images']} images, {len(report['classes'])} classes")
    t.add_column("#", justify="right")
    t.add_column("class")
    t.add_column("images", justify="right")
    for i, (c, n) in enumerate(report["classes"].items()):
        t.add_row(str(i), c, str(n))
    out.print(t)
    sizes = ", ".join(f"{k} x{v}" for k, v in report["sizes"].items())
    modes = ", ".join(f"{k} x{v}" for k, v in report["modes"].items())
    out.print(f"original sizes: {sizes}")
    out.print(f"modes: {modes}  -> stored as {report['channels']} channel(s)")
    depths = ", ".join(f"{k}-bit x{v}" for k, v in report.get("bit_depths", {}).items())
    out.print(f"bit depths: {depths}")
    if report.get("mixed_bit_depths"):
        out.print(
            "[yellow]mixed bit depths[/yellow]: each file is scaled to 8 bits by its own "
            "declared depth (value >> (depth - 8)); check that deeper files really use "
            "their full range"
        )
    if "layout_split" in report:
        out.print(f"layout's own split: {report['layout_split']}")
    out.print(f"duplicates (identical pixels, kept in one split): {len(report['duplicates'])}")
    for g in report["duplicates"]:
        out.print("  " + " = ".join(g))
    out.print(f"dataset_hash: {report['dataset_hash']}")


def _problem_table(title: str, items: list[dict]):
    from rich.table import Table

    t = Table(title=title)
    t.add_column("file")
    t.add_column("problem")
    for p in items:
        t.add_row(p["file"], p["problem"])
    return t


def _print_verdict(out, err, report: dict) -> None:
    """Usable (stdout), or why not and the fix (stderr)."""
    from rich.text import Text

    if not report["usable"]:
        if report["problems"] and report["num_images"]:
            err.print(f"[red]not usable[/red] as is. Fix: {FIX}.", soft_wrap=True)
        else:
            msg = report.get("error", "see problems above")
            err.print(Text("not usable: ", style="red") + Text(msg), soft_wrap=True)
    else:
        out.print("[green]usable[/green]")
