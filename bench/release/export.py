"""After measuring: which models to export, their ONNX files, the parity proof, and the
recommended deployment artifact next to each (bench run --export)."""

from __future__ import annotations

from pathlib import Path

from bench import measure as speed
from bench.measure.step import row_metadata
from bench.registry import load_checkpoint
from bench.release.section import assign, view
from bench.summary import best_rows, headline_split


def _batch1_latency(rows: list[dict], name: str, runtime: str = "torch") -> float | None:
    for r in rows:
        if (
            r.get("model") == name
            and r.get("runtime") == runtime
            and r.get("batch_size") == 1
            and r.get("precision") == "fp32"
            and not r.get("max_batch")
            and "latency_ms_p50" in r
        ):
            return r["latency_ms_p50"]
    return None


def select_exports(results: dict, how: str) -> tuple[list[str], str]:
    """Models to export, and why. how: best | pareto | all | none | comma list."""
    summary = results["summary"]  # bench.summary, computed once when training ended
    ok = [s["model"] for s in summary if s["accuracy_mean"] is not None]
    if how == "none" or not ok:
        return [], "none"
    if how == "all":
        return ok, "all"
    if how not in ("best", "pareto"):
        names = [n.strip() for n in how.split(",") if n.strip()]
        missing = [n for n in names if n not in ok]
        if missing:
            raise ValueError(f"--export {how}: {missing} did not train successfully in this run")
        return names, "requested"
    acc = {s["model"]: s["accuracy_mean"] for s in summary if s["model"] in ok}
    lat = {n: _batch1_latency(results["speed"], n) for n in ok}
    best = max(ok, key=lambda n: (acc[n], -(lat[n] or 0)))
    if how == "best" or any(v is None for v in lat.values()):
        return [best], "best"
    front = speed.pareto_front([(lat[n], acc[n]) for n in ok])
    chosen = [best] + [ok[i] for i in front if ok[i] != best]
    return chosen, "pareto"


def export_and_verify(
    results: dict, out: Path, ctx, opts, reporter, contexts=None, staged=None
) -> dict:
    """`bench run --export`: the export step's section (export_section), assigned into
    results; returns the section."""
    section = export_section(results, out, ctx, opts, reporter, contexts=contexts, staged=staged)
    return assign(results, section)


def export_section(
    results: dict, out: Path, ctx, opts, reporter, contexts=None, staged=None
) -> dict:
    """The export step's results.json section; results itself is only read.

    Owns: export_selection; exports (one entry per exported model, with its model card,
    recommended artifact and raw-pixel copy); repository (serve_exports, with
    --export-repository); plot (with --speed); models.<name>.onnx_size_mb; its own entries
    of the card_errors and plot_errors logs.

    contexts: fold -> FoldData (cross-validation); each export is checked on its own
    fold's images. staged: model -> the ONNX file the speed step of this invocation exported
    from the same checkpoint with the same metadata; it is moved here instead of exported
    again, and the unexported ones are deleted (they were the speed step's working files)."""
    staged = staged or {}
    names, why = select_exports(results, opts.export)
    section: dict = {"export_selection": {"how": why, "models": names}}
    for name, src in staged.items():
        if name not in names:
            src.unlink(missing_ok=True)
    if not names:
        return section
    best = best_rows(results)
    entries = []
    for name in names:
        rctx = (contexts or {}).get(best[name].get("fold"), ctx)
        entries.append(_export_one(name, best[name], results, out, rctx, opts, reporter, staged))
    section["exports"] = entries
    section["models"] = {e["model"]: {"onnx_size_mb": e["size_mb"]} for e in entries
                         if "size_mb" in e}  # fmt: skip
    section.update(_cards(view(results, section), out, reporter))
    if opts.embed_preprocessing or opts.export_repository:
        section.update(_serve(view(results, section), out, ctx, opts, reporter, contexts))
    if opts.speed:
        section.update(plot_section(results, out))
    return section


def _export_one(name, row, results, out: Path, rctx, opts, reporter, staged) -> dict:
    """One model's export entry: its ONNX file, parity with torch, the test figures the file
    itself achieves and its recommended artifact; a failure is recorded in the entry."""
    from exports.figures import parity_figures, stamp_figures
    from exports.parity import check_parity

    # Parity runs on every test image (data that chose nothing; val when there is no test
    # split), exactly as evaluation fed them (fp32, CPU).
    split = row.get("accuracy_split", "val")
    idx = rctx.test_idx if split == "test" else rctx.val_idx
    inputs = rctx.eval_inputs(idx).float().cpu().contiguous()
    labels = rctx.labels[idx].cpu().numpy()
    path = out / "exports" / f"{name}.onnx"
    entry = {
        "model": name,
        "seed": row["seed"],
        "fold": row.get("fold"),
        "images": split,
        "path": str(path.relative_to(out)),
    }
    try:
        model, meta = load_checkpoint(out / row["checkpoint"])
        _write_onnx(name, row, model, meta, path, staged.get(name), reporter)
        entry["size_mb"] = speed.file_size_mb(path)
        reporter.log(f"[{name}] parity on {len(labels)} {split} images")
        parity = check_parity(model, path, inputs, labels, batch_sizes=(1, 32), provider="cpu",
                              threads=opts.threads)  # fmt: skip
        entry.update(parity.to_dict())
        entry["path"] = str(path.relative_to(out))
        entry["parity_passed"] = bool(parity.passed)
        stamp_figures(path, parity_figures(parity.to_dict(), source=f"{split} split"))
        if not parity.passed:
            reporter.warn(f"[{name}] PARITY FAILED: {'; '.join(parity.failures)}")
        held_out = _test_pixels(rctx, idx, labels) if split == "test" else None
        if held_out is not None:
            entry.update(_stamp_own_figures(path, row, *held_out))
        rec = (results.get("recommendation") or {}).get("by_model", {}).get(name)
        if rec and rec.get("variant"):
            entry["recommended"] = export_recommended(
                rec, name, out, path, results, held_out=held_out
            )
            reporter.log(
                f"[{name}] recommended deployment: {rec['variant']} -> "
                f"{entry['recommended']['path']}"
            )
    except Exception as e:
        entry.update(parity_passed=False, error=f"{type(e).__name__}: {e}")
        reporter.warn(f"[{name}] export failed: {entry['error']}")
    return entry


def _write_onnx(name, row, model, meta, path: Path, staged: Path | None, reporter) -> None:
    """The model's FP32 ONNX file at path: the speed step's export of the same checkpoint
    when there is one (moved), else exported here."""
    import os

    from exports.export import export_onnx

    if staged is not None and staged.is_file():
        reporter.log(f"[{name}] {path}: the speed step's export of this checkpoint")
        path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, path)  # one filesystem (both under out): atomic
    else:
        reporter.log(f"[{name}] exporting to {path}")
        metadata = row_metadata(meta, row)
        export_onnx(model, path, metadata=metadata, image_size=meta["image_size"])


def _cards(results: dict, out: Path, reporter) -> dict:
    """Temperature, review threshold and the model card beside each export; bench.report.card
    records them in the export entries of `results` (a view holding this step's entries).
    Returns this step's card_errors entry when that fails."""
    try:
        from bench.report.card import stamp_exports

        stamp_exports(results, out, reporter)
    except Exception as e:
        reporter.warn(f"model cards / decision metadata failed: {type(e).__name__}: {e}")
        return {"card_errors": [f"{type(e).__name__}: {e}"]}
    return {}


def _serve(results: dict, out: Path, ctx, opts, reporter, contexts) -> dict:
    """Raw-pixel copies and the model repository (bench.release.serving) of the export
    entries of `results` (a view holding this step's entries). The raw-pixel figures are
    recorded in the entries they belong to; a file that failed there fails its entry's
    parity. Returns the serving step's own section (repository)."""
    from bench.release.serving import serve_exports

    section, findings = serve_exports(results, out, ctx, opts, reporter, contexts=contexts)
    entries = results["exports"]
    for found in findings:
        entry = entries[found["entry"]]
        record = entry if found["file"] == "fp32" else entry["recommended"]
        record.update(found["record"])
        if "raw_pixel_error" in found["record"]:
            entry["parity_passed"] = False
    return section


def _test_pixels(ctx, idx, labels):
    """(uint8 test images as decoded, labels): what `exports verify` and `predict` start from,
    or None when the decode cache holds another size than the model's input (then the file
    keeps the run's figure and verify applies its tolerance, saying why)."""
    raw = ctx.gather(idx).cpu().numpy()
    size = ctx.recipe.image_size
    return (raw, labels) if raw.shape[-2:] == (size, size) else None


def _stamp_own_figures(path: Path, row: dict | None, pixels, labels) -> dict:
    """Stamp the file with the test accuracy IT achieves (run as `exports verify` runs it),
    keeping the training run's figure and its precision (bf16 autocast, say) beside it."""
    from exports.runtime import Classifier
    from exports.verify import file_test_figures, stamp_test_figures

    figures = file_test_figures(Classifier(path), pixels, labels)
    torch_figure = None
    if row is not None and row.get("test_accuracy") is not None:
        torch_figure = {
            "accuracy": row["test_accuracy"],
            "correct": row.get("test_correct"),
            "precision": row.get("test_accuracy_precision") or row.get("amp") or "fp32",
            "runtime": "torch",
        }
    stamp_test_figures(path, figures, torch_figure)
    return {
        "file_test_accuracy": figures["accuracy"],
        "file_test_correct": figures["correct"],
        "file_test_precision": figures["precision"],
        "torch_test_accuracy": torch_figure,
    }


def export_recommended(
    rec: dict, name: str, out: Path, fp32_path: Path, results: dict, held_out=None
) -> dict:
    """Put the recommended variant's artifact next to the FP32 export, stamped with its figures.

    INT8/FP16 copies come from the speed step (out/variants/<model>/), made from the same
    checkpoint with the same metadata; the copy here adds the fidelity figures and the
    variant name. Variants that run the FP32 file (ORT FP32, OpenVINO) stamp it instead; torch
    variants ship the checkpoint, named in the entry. Returns the export entry's
    `recommended` record.
    """
    import json

    from bench.measure.deployment import ARTIFACT_SUFFIX
    from exports.quantize import update_metadata
    from neu._io import atomic_write_bytes

    artifact = rec["artifact"]
    row = next(
        r for r in results["deployment"] if r["model"] == name and r["variant"] == rec["variant"]
    )
    figures = _fidelity_figures(row, results)
    # The same keys whatever the variant (readers of results.json see one schema); the file's
    # own test figures only where it is a copy of its own (INT8/FP16), null elsewhere.
    own = dict.fromkeys(("file_test_accuracy", "file_test_correct", "file_test_precision",
                         "torch_test_accuracy"))  # fmt: skip
    if artifact not in ARTIFACT_SUFFIX:  # a torch variant: the checkpoint is the artifact
        ckpt = best_rows(results)[name]["checkpoint"]
        return {**own, "variant": rec["variant"], "path": ckpt, "kind": "checkpoint",
                "precision": row["precision"], "size_mb": speed.file_size_mb(out / ckpt)}  # fmt: skip
    dst = fp32_path.with_name(name + ARTIFACT_SUFFIX[artifact])
    if dst != fp32_path:
        src = out / "variants" / name / dst.name
        atomic_write_bytes(dst, src.read_bytes())
    update_metadata(
        dst, {"fidelity": json.dumps(figures, sort_keys=True), "deployment_variant": rec["variant"]}
    )
    if held_out is not None and dst != fp32_path:  # an INT8/FP16 copy states its own figure
        own = _stamp_own_figures(dst, None, *held_out)
    return {
        **own,
        "variant": rec["variant"],
        "path": str(dst.relative_to(out)),
        "kind": "onnx",
        "precision": row["precision"],
        "size_mb": speed.file_size_mb(dst),
    }


def _fidelity_figures(row: dict, results: dict) -> dict:
    """The `fidelity` metadata of a deployment variant's file: its deployment row's figures."""
    figures = {
        k: row[k]
        for k in (
            "variant",
            "runtime",
            "precision",
            "agreement",
            "test_accuracy",
            "accuracy_delta_pp",
            "max_abs_logit_diff",
            "fidelity_images",
            "fidelity_source",
            "fidelity_rule",
            "latency_ms_p50",
            "speedup_vs_torch_fp32",
        )  # fmt: skip
    }
    figures["cpu_isa"] = results.get("environment", {}).get("cpu_isa_label")
    # The same core keys as exports.figures.own_figures: verify reads either.
    figures.update(
        judged=True,
        provider=row.get("provider"),
        n_images=row["fidelity_images"],
        images=row["fidelity_source"],
        passed=bool(row["passed"]),
        rule=row["fidelity_rule"],
        failures=list(row.get("fidelity_failures") or []),
    )
    return figures


def plot_section(results: dict, out: Path) -> dict:
    """Accuracy vs batch-1 FP32 latency of every measured runtime: results.json `plot`, or
    this step's entry of the plot_errors log when the picture fails."""
    summary = {s["model"]: s for s in results["summary"]}
    points = []
    for r in results["speed"]:
        if (
            r.get("batch_size") == 1
            and r.get("precision") == "fp32"
            and "latency_ms_p50" in r
            and summary.get(r["model"], {}).get("accuracy_mean") is not None
        ):
            # The headline accuracy (test when the run has a test split), as ylabel says.
            points.append({**r, "accuracy": summary[r["model"]]["accuracy_mean"]})
    if not points:
        return {}
    split = headline_split(results["rows"])
    what = "test accuracy" if split == "test" else "validation accuracy (picked the epoch)"
    try:
        speed.plot_accuracy_vs_latency(
            points, out / "accuracy_vs_latency.png", ylabel=f"{what} (%, higher is better)"
        )
    except Exception as e:  # a picture must never cost the run its numbers and exports
        return {"plot_errors": [f"accuracy vs latency: {type(e).__name__}: {e}"]}
    return {"plot": "accuracy_vs_latency.png"}
