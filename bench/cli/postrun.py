"""`bench calibrate RUN_DIR` and `bench explain RUN_DIR --model M`: the calibration, review
threshold, model cards and Grad-CAM of an existing run folder, without training again.

The data is rebuilt from results.json (dataset root, image size, layout) and the run's own
split manifests (split.json / split_fold<k>.json, checked file by file against the data),
so the validation and test images are exactly those of the run.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from bench.config import ConfigError


def load_results(run_dir: Path) -> dict:
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        raise ConfigError(f"RUN_DIR {run_dir}: no results.json there; pass a `bench run` --out")
    return json.loads(path.read_text())


def contexts_for_run(run_dir: Path, results: dict, data: str | None = None) -> dict:
    """fold -> FoldData over the run's own dataset and split manifests."""
    import torch

    from bench.config import Recipe
    from bench.train.folds import FoldData
    from neu.dataset import load_dataset
    from neu.split import load_manifest

    fields = {f.name for f in dataclasses.fields(Recipe)}
    recipe = Recipe(**{k: v for k, v in results["recipe"].items() if k in fields})
    run, ds_rec = results.get("run") or {}, results["dataset"]
    root = data or ds_rec["root"]
    if not Path(root).is_dir():
        raise ConfigError(f"the run's dataset {root} is not there: pass --data PATH")
    ds = load_dataset(
        root,
        image_size=recipe.image_size,
        layout=run.get("layout", "auto"),
        exclude_bad=run.get("exclude_bad", False),
    )
    manifests = ds_rec.get("manifest") or "split.json"
    manifests = [manifests] if isinstance(manifests, str) else manifests
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    contexts: dict = {}
    for m in manifests:
        split = load_manifest(Path(run_dir) / m, ds)
        contexts[split.fold] = FoldData(
            ds, split, recipe, device, images_from=next(iter(contexts.values()), None)
        )
    return contexts


def calibrate_run(
    run_dir: Path, *, target: float, data: str | None, explain: bool, reporter
) -> dict:
    """Everything bench run does after speed for calibration, on an existing run folder:
    results.json `calibration` (and `explanations`), the plots, the decision metadata and
    model cards of its exports, and the reports."""
    from bench.release.calibrate import calibrate_into
    from bench.report import core as report

    run_dir = Path(run_dir)
    results = load_results(run_dir)
    if not any(r.get("status") == "ok" for r in results.get("rows", [])):
        raise ConfigError(f"RUN_DIR {run_dir}: no trained model in its results.json")
    contexts = contexts_for_run(run_dir, results, data)
    calibrate_into(results, run_dir, contexts, target, reporter)
    if explain:
        from bench.release.explain import explain_into

        explain_into(results, run_dir, contexts, reporter)
    if results.get("exports"):
        from bench.report.card import stamp_exports

        stamp_exports(results, run_dir, reporter)
    report.write_outputs(run_dir, results, final=True)
    return results


def explain_command(
    run_dir: Path, *, model: str, images: list[str] | None, out: str | None, data, reporter
) -> list[dict]:
    """Grad-CAM PNGs of `model`'s shipped checkpoint: for the given image files (true class
    from the run's split manifest when the file is in it), else the run's default set."""
    from bench.registry import load_checkpoint
    from bench.release.explain import explain, explain_row
    from bench.report.calibration import shipped_record
    from bench.summary import best_rows
    from exports.runtime import collect_images
    from neu.image import load_image, normalize

    run_dir = Path(run_dir)
    results = load_results(run_dir)
    rows = best_rows(results)
    if model not in rows:
        raise ConfigError(f"--model {model}: not trained in {run_dir}; trained: {sorted(rows)}")
    row = rows[model]
    out_dir = Path(out) if out else run_dir / "explain" / model
    if not images:
        contexts = contexts_for_run(run_dir, results, data)
        ctx = contexts.get(row.get("fold")) or next(iter(contexts.values()))
        return explain_row(results, run_dir, row, ctx, out_dir)[0]
    files, _ = collect_images(images)
    missing = [str(f) for f in files if not Path(f).is_file()]
    if missing:
        raise ConfigError(f"--images: {', '.join(missing[:5])} not found")
    net, meta = load_checkpoint(run_dir / row["checkpoint"])
    rec = shipped_record(results, model)
    if rec is None:
        reporter.warn(f"{model}: no calibration in {run_dir} (run `bench calibrate`): T = 1")
    pixels = [load_image(f, size=meta["image_size"], channels=meta["channels"]) for f in files]
    known = _manifest_classes(run_dir)
    classes = list(meta["classes"])
    labels = [classes.index(known[f.name]) if known.get(f.name) in classes else None
              for f in files]  # fmt: skip
    import numpy as np

    px = np.stack(pixels)
    return explain(
        net, model, normalize(px, meta["mean"], meta["std"]), px, [str(f) for f in files],
        classes, labels=labels, temperature=rec["temperature"] if rec else 1.0, out_dir=out_dir,
    )  # fmt: skip


def _manifest_classes(run_dir: Path) -> dict[str, str]:
    """file name -> class, from the run's split.json (empty when it has none)."""
    path = Path(run_dir) / "split.json"
    if not path.is_file():
        return {}
    items = json.loads(path.read_text()).get("items", [])
    return {Path(i["file"]).name: i["class"] for i in items if "file" in i and "class" in i}


def add_parsers(sub) -> None:
    c = sub.add_parser(
        "calibrate",
        help="temperature, review threshold, model cards and Grad-CAM of an existing run",
        description="Fits the temperature on the run's validation images, picks the review "
        "threshold for --target-accuracy, measures both on its test images, stamps its "
        "exports and writes their model cards; rewrites results.json and the reports.",
    )
    c.add_argument("run_dir", help="a `bench run` output folder (holding results.json)")
    c.add_argument("--target-accuracy", type=float, default=0.995,
                   help="accuracy the automatic decisions must reach (default 0.995)")  # fmt: skip
    c.add_argument("--data", help="the dataset folder, when not where results.json says")
    c.add_argument("--no-explain", action="store_true", help="skip the Grad-CAM overlays")
    e = sub.add_parser("explain", help="Grad-CAM overlays of a trained model for any image")
    e.add_argument("run_dir", help="a `bench run` output folder (holding results.json)")
    e.add_argument("--model", required=True, help="a model trained in that run")
    e.add_argument("--images", nargs="+", help="image files/folders (default: every "
                   "misclassified test image and one correct image per class)")  # fmt: skip
    e.add_argument("--out", help="folder for the PNGs (default RUN_DIR/explain/MODEL)")
    e.add_argument("--data", help="the dataset folder, when not where results.json says")


def dispatch(args, console) -> int:
    try:
        return _dispatch(args, console)
    except (ValueError, FileNotFoundError) as e:  # bad data, manifest or image (ConfigError too)
        console.print(f"error: {e}", style="bold red", markup=False)
        return 2


def _dispatch(args, console) -> int:
    from bench.ui import make_reporter

    reporter = make_reporter()
    try:
        if args.command == "calibrate":
            if not 0 < args.target_accuracy <= 1:
                raise ConfigError(
                    f"--target-accuracy must be in (0, 1], got {args.target_accuracy}"
                )
            calibrate_run(Path(args.run_dir), target=args.target_accuracy, data=args.data,
                          explain=not args.no_explain, reporter=reporter)  # fmt: skip
            console.print(f"results: {args.run_dir}/results.json, report: "
                          f"{args.run_dir}/report.html", markup=False)  # fmt: skip
            return 0
        items = explain_command(Path(args.run_dir), model=args.model, images=args.images,
                                out=args.out, data=args.data, reporter=reporter)  # fmt: skip
    finally:
        reporter.close()
    out = Path(args.out) if args.out else Path(args.run_dir) / "explain" / args.model
    for i in items:
        console.print(f"{out / i['png']}: true {i['true']}, predicted {i['predicted']} "
                      f"(p={i['probability']:.3f})", markup=False)  # fmt: skip
    return 0
